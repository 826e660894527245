package interop

// HTTP/2 abuse against the real server, from raw connections driven with
// golang.org/x/net/http2's Framer, while a well-behaved grpc-go client keeps
// recording runs on its own connection. Every attack is bounded in count
// and time. The good client must get every answer, the server must keep
// serving, and its peak RSS must stay under rssBoundKiB. Each test logs the
// peak RSS and the good client's p50/p99 during the attack.

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/protobuf/proto"

	pb "runstore.dev/interop/gen/persistencev1"
)

// rssBoundKiB is the most resident memory the server may reach under any
// one attack.
const rssBoundKiB = 512 * 1024

const (
	servicePath = "/orchestrator.persistence.v1.PersistenceService/"
	// The server's limits (src/server/transport.rs).
	maxConnections  = 4096
	maxHeaderListKB = 16
)

// goodClient records runs in a loop on its own connection until stopped.
type goodClient struct {
	stop      chan struct{}
	done      chan struct{}
	latencies []time.Duration
	failures  []error
}

func startGoodClient(t *testing.T, s *server, task string) *goodClient {
	t.Helper()
	client := pb.NewPersistenceServiceClient(connect(t, s))
	g := &goodClient{stop: make(chan struct{}), done: make(chan struct{})}
	summary := loadFixture(t).raw
	go func() {
		defer close(g.done)
		for i := 0; ; i++ {
			select {
			case <-g.stop:
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			started := time.Now()
			_, err := CompleteRun(ctx, client, task, fmt.Sprintf("good-%06d", i),
				time.Unix(1_767_225_600+int64(i), 0), rewriteIDs(summary, task, fmt.Sprintf("good-%06d", i)))
			cancel()
			g.latencies = append(g.latencies, time.Since(started))
			if err != nil {
				g.failures = append(g.failures, err)
			}
			time.Sleep(2 * time.Millisecond)
		}
	}()
	return g
}

// rewriteIDs gives the fixture the ids of the call, which the server checks.
func rewriteIDs(summary []byte, task, run string) []byte {
	var doc map[string]any
	_ = json.Unmarshal(summary, &doc)
	doc["taskId"], doc["runId"] = task, run
	out, _ := json.Marshal(doc)
	return out
}

// finish stops the client and fails the test on any failed call; it
// returns "calls N, p50 X, p99 Y".
func (g *goodClient) finish(t *testing.T) string {
	t.Helper()
	close(g.stop)
	select {
	case <-g.done:
	case <-time.After(30 * time.Second):
		t.Fatal("the good client did not stop within 30s")
	}
	if len(g.latencies) == 0 {
		t.Fatal("the good client made no call")
	}
	for _, err := range g.failures {
		t.Errorf("good client: %v", err)
	}
	sorted := slices.Clone(g.latencies)
	slices.Sort(sorted)
	q := func(p float64) time.Duration { return sorted[int(p*float64(len(sorted)-1))] }
	return fmt.Sprintf("good client: %d calls, %d failed, p50 %v, p99 %v",
		len(sorted), len(g.failures), q(0.50).Round(10*time.Microsecond), q(0.99).Round(10*time.Microsecond))
}

// peakRSSKiB is the server's VmHWM.
func peakRSSKiB(t *testing.T, s *server) int {
	t.Helper()
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kib, err := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")))
			if err != nil {
				t.Fatal(err)
			}
			return kib
		}
	}
	t.Fatal("no VmHWM")
	return 0
}

func checkRSS(t *testing.T, s *server) int {
	t.Helper()
	peak := peakRSSKiB(t, s)
	if peak > rssBoundKiB {
		t.Errorf("peak RSS %d MiB, over the %d MiB bound", peak/1024, rssBoundKiB/1024)
	}
	return peak / 1024
}

// rawConn is one HTTP/2 connection spoken frame by frame.
type rawConn struct {
	conn   net.Conn
	framer *http2.Framer
	mu     sync.Mutex // writes
	enc    *hpack.Encoder
	encBuf bytes.Buffer
}

func dialRaw(t *testing.T, addr string, settings ...http2.Setting) *rawConn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c := &rawConn{conn: conn, framer: http2.NewFramer(conn, conn)}
	c.enc = hpack.NewEncoder(&c.encBuf)
	c.framer.ReadMetaHeaders = hpack.NewDecoder(64<<10, nil)
	c.framer.MaxHeaderListSize = 1 << 20
	_ = conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	if err := c.framer.WriteSettings(settings...); err != nil {
		t.Fatal(err)
	}
	return c
}

// headerBlock encodes a gRPC request's headers for method, plus extra.
func (c *rawConn) headerBlock(method string, extra ...hpack.HeaderField) []byte {
	c.encBuf.Reset()
	fields := []hpack.HeaderField{
		{Name: ":method", Value: "POST"},
		{Name: ":scheme", Value: "http"},
		{Name: ":path", Value: servicePath + method},
		{Name: ":authority", Value: "127.0.0.1"},
		{Name: "content-type", Value: "application/grpc"},
		{Name: "te", Value: "trailers"},
	}
	for _, f := range append(fields, extra...) {
		_ = c.enc.WriteField(f)
	}
	return slices.Clone(c.encBuf.Bytes())
}

// writeHeaders sends a header block, split into HEADERS and CONTINUATION
// frames of at most 16 KiB.
func (c *rawConn) writeHeaders(stream uint32, block []byte, endStream bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	const frame = 16 << 10
	first := block[:min(len(block), frame)]
	rest := block[len(first):]
	if err := c.framer.WriteHeaders(http2.HeadersFrameParam{
		StreamID: stream, BlockFragment: first, EndStream: endStream, EndHeaders: len(rest) == 0,
	}); err != nil {
		return err
	}
	for len(rest) > 0 {
		chunk := rest[:min(len(rest), frame)]
		rest = rest[len(chunk):]
		if err := c.framer.WriteContinuation(stream, len(rest) == 0, chunk); err != nil {
			return err
		}
	}
	return nil
}

// grpcMessage frames m as one length-prefixed gRPC message.
func grpcMessage(t *testing.T, m proto.Message) []byte {
	t.Helper()
	body, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]byte, 5, 5+len(body))
	binary.BigEndian.PutUint32(out[1:], uint32(len(body)))
	return append(out, body...)
}

// streamEnd is how the server ended a stream: a gRPC status, an HTTP
// status without one, a reset, or the connection going away.
type streamEnd struct {
	grpcStatus string
	httpStatus string
	reset      http2.ErrCode
	goAway     bool
	closed     bool
}

func (e streamEnd) String() string {
	switch {
	case e.grpcStatus != "":
		return "grpc-status " + e.grpcStatus
	case e.httpStatus != "":
		return "HTTP " + e.httpStatus
	case e.reset != 0:
		return "RST_STREAM " + e.reset.String()
	case e.goAway:
		return "GOAWAY"
	default:
		return "connection closed"
	}
}

// awaitEnd reads frames until stream ends, or the connection does,
// answering pings and settings; bounded by timeout.
func (c *rawConn) awaitEnd(stream uint32, timeout time.Duration) (streamEnd, error) {
	_ = c.conn.SetReadDeadline(time.Now().Add(timeout))
	var end streamEnd
	for {
		f, err := c.framer.ReadFrame()
		if err != nil {
			var netErr net.Error
			if errors.As(err, &netErr) && netErr.Timeout() {
				return end, fmt.Errorf("stream %d did not end within %v", stream, timeout)
			}
			end.closed = true
			return end, nil
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				c.mu.Lock()
				_ = c.framer.WriteSettingsAck()
				c.mu.Unlock()
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				c.mu.Lock()
				_ = c.framer.WritePing(true, f.Data)
				c.mu.Unlock()
			}
		case *http2.GoAwayFrame:
			end.goAway = true
			if f.LastStreamID < stream {
				return end, nil
			}
		case *http2.RSTStreamFrame:
			if f.StreamID == stream {
				end.reset = f.ErrCode
				return end, nil
			}
		case *http2.MetaHeadersFrame:
			if f.StreamID != stream {
				continue
			}
			for _, field := range f.Fields {
				switch field.Name {
				case "grpc-status":
					end.grpcStatus = field.Value
				case ":status":
					end.httpStatus = field.Value
				}
			}
			if f.StreamEnded() {
				return end, nil
			}
		}
	}
}

// drain reads and discards frames until the connection ends, answering
// nothing: it keeps the server's writes from blocking. It returns whether
// the server sent GOAWAY.
func (c *rawConn) drain() <-chan bool {
	goAway := make(chan bool, 1)
	go func() {
		sent := false
		for {
			f, err := c.framer.ReadFrame()
			if err != nil {
				goAway <- sent
				return
			}
			if _, ok := f.(*http2.GoAwayFrame); ok {
				sent = true
			}
		}
	}()
	return goAway
}

func getManifestRequest(t *testing.T) []byte {
	return grpcMessage(t, &pb.GetManifestRequest{TaskId: "abuse", RunId: "missing"})
}

// Rapid reset (CVE-2023-44487): HEADERS then RST_STREAM, in a loop, from
// four workers at once for 3 s (at most 50,000 pairs each); a worker whose
// connection the server cuts off dials again.
func TestRapidResetLeavesOtherCallersServed(t *testing.T) {
	s := startServer(t)
	good := startGoodClient(t, s, "rapid-reset")
	const workers, pairsPerWorker = 4, 50_000
	type result struct{ sent, conns, cutOff int }
	results := make(chan result, workers)
	deadline := time.Now().Add(3 * time.Second)
	for range workers {
		go func() {
			var r result
			for r.sent < pairsPerWorker && time.Now().Before(deadline) {
				c := dialRaw(t, s.addr)
				r.conns++
				drained := c.drain()
				block := c.headerBlock("GetManifest")
				cut := false
				for stream := uint32(1); r.sent < pairsPerWorker && time.Now().Before(deadline); stream += 2 {
					if c.writeHeaders(stream, block, false) != nil {
						cut = true
						break
					}
					c.mu.Lock()
					err := c.framer.WriteRSTStream(stream, http2.ErrCodeCancel)
					c.mu.Unlock()
					if err != nil {
						cut = true
						break
					}
					r.sent++
				}
				c.conn.Close()
				if <-drained || cut {
					r.cutOff++
				}
			}
			results <- r
		}()
	}
	var total result
	for range workers {
		r := <-results
		total.sent += r.sent
		total.conns += r.conns
		total.cutOff += r.cutOff
	}
	summary := good.finish(t)
	peak := checkRSS(t, s)
	t.Logf("rapid reset: %d HEADERS+RST_STREAM pairs over %d connections, %d cut off by the server; peak RSS %d MiB; %s",
		total.sent, total.conns, total.cutOff, peak, summary)
	fmt.Printf("abuse rapid-reset: pairs=%d conns=%d cut_off=%d peak_rss_mib=%d %s\n", total.sent, total.conns, total.cutOff, peak, summary)
}

// Thousands of idle connections, some that never send a byte and some
// that stop after the HTTP/2 preface; past the connection limit new ones
// are closed at once while the ones open (the good client's) keep working;
// once the idle ones close, new connections are served again.
func TestIdleConnectionsAreBoundedByTheConnectionLimit(t *testing.T) {
	s := startServer(t)
	good := startGoodClient(t, s, "idle")
	const total = maxConnections + 300
	conns := make([]net.Conn, 0, total)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := range total {
		c, err := net.DialTimeout("tcp", s.addr, 5*time.Second)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		if i%2 == 0 {
			_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
				t.Fatalf("preface %d: %v", i, err)
			}
			_ = http2.NewFramer(c, c).WriteSettings()
		}
		conns = append(conns, c)
	}
	// The last ones are past the limit: the server closes them.
	closed := 0
	for _, c := range conns[total-200:] {
		_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
		buf := make([]byte, 4096)
		for {
			_, err := c.Read(buf)
			if err == nil {
				continue // the server's SETTINGS to an accepted connection
			}
			var netErr net.Error
			if !(errors.As(err, &netErr) && netErr.Timeout()) {
				closed++
			}
			break
		}
	}
	if closed == 0 {
		t.Errorf("none of the last 200 of %d connections was closed: no connection limit", total)
	}
	peak := checkRSS(t, s)
	for _, c := range conns {
		c.Close()
	}
	conns = nil
	// A new connection is served once the idle ones are gone.
	fresh := pb.NewPersistenceServiceClient(connect(t, s))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := fresh.ListTasks(ctx, &pb.ListTasksRequest{}); err != nil {
		t.Errorf("a new connection after the idle ones closed: %v", err)
	}
	summary := good.finish(t)
	t.Logf("idle connections: %d opened, %d of the last 200 closed by the limit; peak RSS %d MiB; %s", total, closed, peak, summary)
	fmt.Printf("abuse idle-connections: opened=%d closed_of_last_200=%d peak_rss_mib=%d %s\n", total, closed, peak, summary)
}

// Oversized and numerous metadata headers are refused before any handler
// runs; the same raw request with normal headers is answered (the control).
func TestOversizedAndNumerousHeadersAreRefused(t *testing.T) {
	s := startServer(t)
	good := startGoodClient(t, s, "headers")
	body := getManifestRequest(t)
	send := func(extra ...hpack.HeaderField) streamEnd {
		t.Helper()
		c := dialRaw(t, s.addr)
		if err := c.writeHeaders(1, c.headerBlock("GetManifest", extra...), false); err != nil {
			return streamEnd{closed: true}
		}
		c.mu.Lock()
		_ = c.framer.WriteData(1, true, body)
		c.mu.Unlock()
		end, err := c.awaitEnd(1, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		return end
	}
	control := send(hpack.HeaderField{Name: "x-small", Value: "ok"})
	if control.grpcStatus != "5" {
		t.Fatalf("control: a normal request must be answered NOT_FOUND (5), got %v", control)
	}
	oversized := send(hpack.HeaderField{Name: "x-big", Value: strings.Repeat("a", 64<<10)})
	many := make([]hpack.HeaderField, 0, 2000)
	for i := range 2000 {
		many = append(many, hpack.HeaderField{Name: fmt.Sprintf("x-h-%04d", i), Value: "0123456789"})
	}
	numerous := send(many...)
	for name, end := range map[string]streamEnd{"one 64 KiB header": oversized, "2000 headers": numerous} {
		if end.grpcStatus != "" {
			t.Errorf("%s: answered with %v, want refused before the handler", name, end)
		}
	}
	summary := good.finish(t)
	peak := checkRSS(t, s)
	t.Logf("headers over %d KiB: one 64 KiB header -> %v; 2000 headers -> %v; control -> %v; peak RSS %d MiB; %s",
		maxHeaderListKB, oversized, numerous, control, peak, summary)
	fmt.Printf("abuse headers: oversized=%q numerous=%q peak_rss_mib=%d %s\n", oversized, numerous, peak, summary)
}

// A client that asks for large pages and never reads a byte of the replies
// holds at most its streams' encoded replies, and nobody else waits for it.
func TestAClientThatNeverReadsHoldsBoundedMemory(t *testing.T) {
	s := startServer(t)
	client := pb.NewPersistenceServiceClient(connect(t, s))
	// Three runs of 1 MiB summaries: each page is about 3 MiB.
	big := `{"padding":"` + strings.Repeat("x", 1<<20) + `"}`
	for i := range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := CompleteRun(ctx, client, "unread", fmt.Sprintf("big-%d", i), time.Unix(1_767_225_600+int64(i), 0), []byte(big))
		cancel()
		if err != nil {
			t.Fatal(err)
		}
	}
	good := startGoodClient(t, s, "unread-good")
	const streams = 100
	c := dialRaw(t, s.addr)
	block := c.headerBlock("GetTaskSnapshot")
	request := grpcMessage(t, &pb.GetTaskSnapshotRequest{TaskId: "unread", PageSize: 3})
	for i := range streams {
		stream := uint32(2*i + 1)
		if err := c.writeHeaders(stream, block, false); err != nil {
			t.Fatalf("stream %d: %v", stream, err)
		}
		c.mu.Lock()
		err := c.framer.WriteData(stream, true, request)
		c.mu.Unlock()
		if err != nil {
			t.Fatalf("stream %d: %v", stream, err)
		}
	}
	// Never read. Wait until the server's memory stops growing (no new
	// peak for 1 s), bounded at 15 s: then it holds all it will for us.
	last, stableSince := peakRSSKiB(t, s), time.Now()
	for bound := time.Now().Add(15 * time.Second); time.Since(stableSince) < time.Second && time.Now().Before(bound); {
		time.Sleep(100 * time.Millisecond)
		if peak := peakRSSKiB(t, s); peak > last {
			last, stableSince = peak, time.Now()
		}
	}
	summary := good.finish(t)
	peak := checkRSS(t, s)
	t.Logf("never-reading client: %d GetTaskSnapshot streams of ~3 MiB pages unread; peak RSS %d MiB; %s", streams, peak, summary)
	fmt.Printf("abuse never-reads: streams=%d peak_rss_mib=%d %s\n", streams, peak, summary)
}

// A stream that sends a huge message slowly is cut off at the request
// timeout, long before its message would be complete.
func TestASlowHugeMessageIsCutOffAtTheRequestTimeout(t *testing.T) {
	s := startServer(t, "--request-timeout", "2s")
	good := startGoodClient(t, s, "slow-good")
	c := dialRaw(t, s.addr)
	if err := c.writeHeaders(1, c.headerBlock("CompleteRun"), false); err != nil {
		t.Fatal(err)
	}
	// A 4,000,000-byte message announced, sent 1 KiB per 20 ms: it would
	// take over a minute.
	prefix := make([]byte, 5)
	binary.BigEndian.PutUint32(prefix[1:], 4_000_000)
	ended := make(chan streamEnd, 1)
	go func() {
		end, err := c.awaitEnd(1, 20*time.Second)
		if err != nil {
			end = streamEnd{}
		}
		ended <- end
	}()
	started := time.Now()
	c.mu.Lock()
	_ = c.framer.WriteData(1, false, prefix)
	c.mu.Unlock()
	chunk := bytes.Repeat([]byte{'x'}, 1024)
	sentBytes := 0
	var end streamEnd
	finished := false
	for !finished && sentBytes < 4_000_000 && time.Since(started) < 20*time.Second {
		select {
		case end = <-ended:
			finished = true
		case <-time.After(20 * time.Millisecond):
			c.mu.Lock()
			err := c.framer.WriteData(1, false, chunk)
			c.mu.Unlock()
			if err == nil {
				sentBytes += len(chunk)
			}
		}
	}
	if !finished {
		t.Fatalf("the slow stream was not cut off within 20s (%d bytes sent)", sentBytes)
	}
	if end.grpcStatus == "0" {
		t.Fatalf("the slow stream was answered OK: %v", end)
	}
	elapsed := time.Since(started)
	summary := good.finish(t)
	peak := checkRSS(t, s)
	t.Logf("slow huge message: cut off after %v and %d KiB of 3906 (%v); peak RSS %d MiB; %s",
		elapsed.Round(time.Millisecond), sentBytes/1024, end, peak, summary)
	fmt.Printf("abuse slow-message: cut_after=%v sent_kib=%d end=%q peak_rss_mib=%d %s\n",
		elapsed.Round(time.Millisecond), sentBytes/1024, end, peak, summary)
}

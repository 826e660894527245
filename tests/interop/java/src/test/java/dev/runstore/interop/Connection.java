package dev.runstore.interop;

import static org.junit.jupiter.api.Assertions.fail;

import io.grpc.CallOptions;
import io.grpc.Channel;
import io.grpc.ClientCall;
import io.grpc.ClientInterceptor;
import io.grpc.ClientInterceptors;
import io.grpc.Context;
import io.grpc.ForwardingClientCall;
import io.grpc.Grpc;
import io.grpc.InsecureChannelCredentials;
import io.grpc.ManagedChannel;
import io.grpc.MethodDescriptor;
import io.grpc.StatusRuntimeException;
import io.grpc.health.v1.HealthCheckRequest;
import io.grpc.health.v1.HealthCheckResponse;
import io.grpc.health.v1.HealthCheckResponse.ServingStatus;
import io.grpc.health.v1.HealthGrpc;
import java.time.Duration;
import java.util.Iterator;
import java.util.List;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.TimeUnit;
import orchestrator.persistence.v1.CompleteRunRequest;
import orchestrator.persistence.v1.PersistenceServiceGrpc;

/**
 * A real channel to a test's server. {@link #channel()} records every CompleteRun request sent
 * through it, so tests can count attempts and check that retries repeat the same ids.
 */
final class Connection implements AutoCloseable {
  static final Duration RPC_DEADLINE = Duration.ofSeconds(10);

  private final ManagedChannel managed;
  private final Channel recording;
  private final List<CompleteRunRequest> completeRunRequests = new CopyOnWriteArrayList<>();

  Connection(String address) {
    managed = Grpc.newChannelBuilder(address, InsecureChannelCredentials.create()).build();
    recording = ClientInterceptors.intercept(managed, new Recorder());
  }

  /** Dials the server and waits, bounded, until it is ready: the service's health SERVING. */
  static Connection open(RunstoreServer server) {
    Connection connection = new Connection(server.address());
    connection.waitFor(InteropTest.SERVICE, ServingStatus.SERVING);
    return connection;
  }

  Channel channel() {
    return recording;
  }

  /** Every CompleteRun request sent so far, in order. */
  List<CompleteRunRequest> completeRunRequests() {
    return List.copyOf(completeRunRequests);
  }

  PersistenceServiceGrpc.PersistenceServiceBlockingStub persistence() {
    return PersistenceServiceGrpc.newBlockingStub(recording)
        .withDeadlineAfter(RPC_DEADLINE.toMillis(), TimeUnit.MILLISECONDS);
  }

  HealthGrpc.HealthBlockingStub health() {
    return HealthGrpc.newBlockingStub(managed)
        .withDeadlineAfter(RPC_DEADLINE.toMillis(), TimeUnit.MILLISECONDS);
  }

  /**
   * Watches the health of {@code service} until it reports {@code wanted}, for at most the RPC
   * deadline. Readiness (the persistence service) starts NOT_SERVING until the first storage probe
   * write succeeds; liveness ("") is SERVING from the start until shutdown.
   */
  void waitFor(String service, ServingStatus wanted) {
    HealthCheckRequest request = HealthCheckRequest.newBuilder().setService(service).build();
    // Cancelling the context ends the watch once it has told us what we wait for.
    try (Context.CancellableContext watch = Context.current().withCancellation()) {
      ServingStatus last =
          watch.call(
              () -> {
                ServingStatus seen = ServingStatus.UNKNOWN;
                Iterator<HealthCheckResponse> updates = health().watch(request);
                while (updates.hasNext()) {
                  seen = updates.next().getStatus();
                  if (seen == wanted) {
                    break;
                  }
                }
                return seen;
              });
      if (last != wanted) {
        fail("health of \"" + service + "\" ended at " + last + ", want " + wanted);
      }
    } catch (StatusRuntimeException e) {
      fail("health of \"" + service + "\" never reported " + wanted + ": " + e.getStatus());
    } catch (Exception e) {
      throw new AssertionError(e);
    }
  }

  @Override
  public void close() throws InterruptedException {
    managed.shutdownNow();
    if (!managed.awaitTermination(10, TimeUnit.SECONDS)) {
      fail("channel did not terminate within 10s");
    }
  }

  /** Records the CompleteRun requests that go out on the channel. */
  private final class Recorder implements ClientInterceptor {
    @Override
    public <ReqT, RespT> ClientCall<ReqT, RespT> interceptCall(
        MethodDescriptor<ReqT, RespT> method, CallOptions options, Channel next) {
      ClientCall<ReqT, RespT> call = next.newCall(method, options);
      if (!method.getFullMethodName()
          .equals(PersistenceServiceGrpc.getCompleteRunMethod().getFullMethodName())) {
        return call;
      }
      return new ForwardingClientCall.SimpleForwardingClientCall<>(call) {
        @Override
        public void sendMessage(ReqT message) {
          completeRunRequests.add((CompleteRunRequest) message);
          super.sendMessage(message);
        }
      };
    }
  }
}

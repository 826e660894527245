//! TLS, mutual TLS and bearer tokens, with certificates made at test time.

use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use runstore::{
    proto::{Outcome, persistence_service_client::PersistenceServiceClient},
    server::{ServerSettings, TlsSettings, auth::BearerTokens},
};
use tonic::{
    Code,
    metadata::MetadataValue,
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::helpers::{
    Backend, RowCounts, Table, TestStore, complete_request, fast_settings, spawn_app_with, ts,
};

/// A CA and a key/certificate pair it signed.
struct Pki {
    ca_pem: String,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

struct Leaf {
    cert_pem: String,
    key_pem: String,
}

impl Pki {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key"))
            .expect("CA cert");
        Self {
            ca_pem: issuer.pem(),
            issuer,
        }
    }

    fn leaf(&self, names: &[&str]) -> Leaf {
        let key = KeyPair::generate().expect("leaf key");
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf cert");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

async fn tls_server(backend: Backend, pki: &Pki, mutual: bool) -> crate::helpers::TestApp {
    let server = pki.leaf(&["localhost"]);
    let store = TestStore::fresh(backend);
    let storage = store.open(&Default::default()).await;
    let settings = ServerSettings {
        tls: Some(TlsSettings {
            cert_pem: server.cert_pem.into_bytes(),
            key_pem: server.key_pem.into_bytes(),
            client_ca_pem: mutual.then(|| pki.ca_pem.clone().into_bytes()),
        }),
        ..fast_settings()
    };
    spawn_app_with(store, storage, settings).await
}

async fn tls_channel(
    app: &crate::helpers::TestApp,
    ca_pem: &str,
    client: Option<&Leaf>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some(leaf) = client {
        tls = tls.identity(Identity::from_pem(&leaf.cert_pem, &leaf.key_pem));
    }
    Channel::from_shared(format!("https://localhost:{}", app.port))
        .expect("uri")
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
}

/// A CompleteRun over `channel`; the code of the failure, or OK.
async fn call_code(channel: Channel) -> Code {
    let request = complete_request("secure", &format!("run-{}", rand_suffix()), &ts(1));
    match PersistenceServiceClient::new(channel)
        .complete_run(request)
        .await
    {
        Ok(reply) => {
            assert_eq!(reply.into_inner().outcome(), Outcome::AllWritten);
            Code::Ok
        }
        Err(status) => status.code(),
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos()
}

async fn tls_serves_clients_that_trust_its_ca_and_only_over_tls(backend: Backend) {
    let pki = Pki::new("runstore test CA");
    let app = tls_server(backend, &pki, false).await;

    let channel = tls_channel(&app, &pki.ca_pem, None)
        .await
        .expect("TLS connect");
    assert_eq!(call_code(channel).await, Code::Ok);

    // A client trusting another CA refuses the server's certificate.
    let stranger = Pki::new("some other CA");
    let refused = match tls_channel(&app, &stranger.ca_pem, None).await {
        Ok(channel) => call_code(channel).await,
        Err(_) => Code::Unavailable,
    };
    assert_ne!(refused, Code::Ok);

    // Plaintext gets nowhere.
    let plain = Channel::from_shared(format!("http://127.0.0.1:{}", app.port)).expect("uri");
    let plain_result = match plain.connect().await {
        Ok(channel) => call_code(channel).await,
        Err(_) => Code::Unavailable,
    };
    assert_ne!(plain_result, Code::Ok);
    // Only the one TLS call was stored.
    assert_eq!(app.db().row_counts().manifests, 1);
}
contract_test!(tls_serves_clients_that_trust_its_ca_and_only_over_tls);

async fn mutual_tls_requires_a_client_certificate_from_the_ca(backend: Backend) {
    let pki = Pki::new("runstore test CA");
    let app = tls_server(backend, &pki, true).await;

    let good = pki.leaf(&["orchestrator"]);
    let channel = tls_channel(&app, &pki.ca_pem, Some(&good))
        .await
        .expect("mTLS connect");
    assert_eq!(call_code(channel).await, Code::Ok);

    let without = match tls_channel(&app, &pki.ca_pem, None).await {
        Ok(channel) => call_code(channel).await,
        Err(_) => Code::Unavailable,
    };
    assert_ne!(without, Code::Ok, "no client certificate");

    let wrong = Pki::new("an attacker's CA").leaf(&["orchestrator"]);
    let with_wrong = match tls_channel(&app, &pki.ca_pem, Some(&wrong)).await {
        Ok(channel) => call_code(channel).await,
        Err(_) => Code::Unavailable,
    };
    assert_ne!(with_wrong, Code::Ok, "certificate from another CA");
    assert_eq!(app.db().row_counts().manifests, 1);
}
contract_test!(mutual_tls_requires_a_client_certificate_from_the_ca);

async fn bearer_tokens_guard_the_service_but_not_health(backend: Backend) {
    let store = TestStore::fresh(backend);
    let tokens_file = store.root().join("tokens");
    std::fs::write(
        &tokens_file,
        "# orchestrators\nsecret-one\n\n  secret-two  \n",
    )
    .expect("tokens file");
    let storage = store.open(&Default::default()).await;
    let settings = ServerSettings {
        auth: Some(BearerTokens::from_file(&tokens_file).expect("tokens")),
        ..fast_settings()
    };
    let app = spawn_app_with(store, storage, settings).await;
    app.wait_for_health(ServingStatus::Serving).await;

    let call = |token: Option<&'static str>| {
        let mut client = app.client();
        async move {
            let mut request = tonic::Request::new(complete_request("guarded", "run-1", &ts(1)));
            if let Some(token) = token {
                let value: MetadataValue<_> = token.parse().expect("header");
                request.metadata_mut().insert("authorization", value);
            }
            client
                .complete_run(request)
                .await
                .map(|r| r.into_inner().outcome())
        }
    };
    for bad in [
        None,
        Some("Bearer wrong"),
        Some("Bearer secret-on"),
        Some("secret-one"),
        Some("Basic c2VjcmV0LW9uZQ=="),
    ] {
        let err = call(bad).await.expect_err("refused");
        assert_eq!(err.code(), Code::Unauthenticated, "{bad:?}");
    }
    assert_eq!(
        app.db().row_counts(),
        RowCounts::default(),
        "refused calls wrote nothing"
    );
    assert_eq!(
        call(Some("Bearer secret-one")).await.expect("accepted"),
        Outcome::AllWritten
    );
    assert_eq!(
        call(Some("Bearer secret-two")).await.expect("accepted"),
        Outcome::AllWritten
    );
    assert_eq!(app.db().count(Table::Manifests, "guarded"), 1);

    // Probes need no token.
    let health = HealthClient::new(app.channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health without a token");
    assert_eq!(health.into_inner().status(), ServingStatus::Serving);
}
contract_test!(bearer_tokens_guard_the_service_but_not_health);

/// The RPCs and the scope each needs.
const SCOPED_RPCS: &[(&str, &str)] = &[
    ("CompleteRun", "write"),
    ("GetManifest", "read"),
    ("GetTaskSnapshot", "read"),
    ("ListTasks", "read"),
    ("DeleteRun", "delete"),
];

/// Calls `rpc` with `token` on a run that exists (task "scoped", run "r1")
/// and returns the call's code. `valid` false sends ids that break the
/// rules, to show that scopes are checked before validation.
async fn call_rpc(
    client: &mut PersistenceServiceClient<Channel>,
    rpc: &str,
    token: &str,
    valid: bool,
) -> Code {
    use runstore::proto::{
        DeleteRunRequest, GetManifestRequest, GetTaskSnapshotRequest, ListTasksRequest,
    };
    fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        let value: MetadataValue<_> = format!("Bearer {token}").parse().expect("header");
        request.metadata_mut().insert("authorization", value);
        request
    }
    let task_id = if valid { "scoped" } else { "bad/task" };
    let code = |result: Result<(), tonic::Status>| result.err().map_or(Code::Ok, |s| s.code());
    match rpc {
        "CompleteRun" => code(
            client
                .complete_run(with_token(complete_request(task_id, "r2", &ts(2)), token))
                .await
                .map(drop),
        ),
        "GetManifest" => code(
            client
                .get_manifest(with_token(
                    GetManifestRequest {
                        task_id: task_id.into(),
                        run_id: "r1".into(),
                        ..Default::default()
                    },
                    token,
                ))
                .await
                .map(drop),
        ),
        "GetTaskSnapshot" => code(
            client
                .get_task_snapshot(with_token(
                    GetTaskSnapshotRequest {
                        task_id: task_id.into(),
                        ..Default::default()
                    },
                    token,
                ))
                .await
                .map(drop),
        ),
        "ListTasks" => code(
            client
                .list_tasks(with_token(
                    ListTasksRequest {
                        prefix: if valid { "sc" } else { "bad\u{1}" }.into(),
                        ..Default::default()
                    },
                    token,
                ))
                .await
                .map(drop),
        ),
        "DeleteRun" => code(
            client
                .delete_run(with_token(
                    DeleteRunRequest {
                        task_id: task_id.into(),
                        run_id: "absent".into(),
                    },
                    token,
                ))
                .await
                .map(drop),
        ),
        other => panic!("unknown RPC {other}"),
    }
}

/// Every RPC against every scope: a token reaches exactly the RPCs its
/// scopes name (a bare token all of them), checked before validation.
async fn token_scopes_limit_each_rpc(backend: Backend) {
    let store = TestStore::fresh(backend);
    let tokens_file = store.root().join("tokens");
    std::fs::write(
        &tokens_file,
        "admin\nreader read\nwriter write\ndeleter delete\nsyncer read, write\n",
    )
    .expect("tokens file");
    let storage = store.open(&Default::default()).await;
    let settings = ServerSettings {
        auth: Some(BearerTokens::from_file(&tokens_file).expect("tokens")),
        ..fast_settings()
    };
    let app = spawn_app_with(store, storage, settings).await;
    app.wait_for_health(ServingStatus::Serving).await;
    let mut client = app.client();
    assert_eq!(
        call_rpc(&mut client, "CompleteRun", "admin", true).await,
        Code::Ok
    );
    let mut request = tonic::Request::new(complete_request("scoped", "r1", &ts(1)));
    let value: MetadataValue<_> = "Bearer writer".parse().expect("header");
    request.metadata_mut().insert("authorization", value);
    client.complete_run(request).await.expect("write r1");

    let tokens: &[(&str, &[&str])] = &[
        ("admin", &["read", "write", "delete"]),
        ("reader", &["read"]),
        ("writer", &["write"]),
        ("deleter", &["delete"]),
        ("syncer", &["read", "write"]),
    ];
    for (token, scopes) in tokens {
        for (rpc, needs) in SCOPED_RPCS {
            let allowed = scopes.contains(needs);
            let (valid, invalid) = (
                call_rpc(&mut client, rpc, token, true).await,
                call_rpc(&mut client, rpc, token, false).await,
            );
            if allowed {
                assert_eq!(valid, Code::Ok, "{token} may call {rpc}");
                assert_eq!(invalid, Code::InvalidArgument, "{token}: {rpc} validates");
            } else {
                assert_eq!(valid, Code::PermissionDenied, "{token} may not call {rpc}");
                assert_eq!(
                    invalid,
                    Code::PermissionDenied,
                    "{token}: scope before validation"
                );
            }
        }
    }
    // An unknown token is UNAUTHENTICATED, whatever the RPC.
    for (rpc, _) in SCOPED_RPCS {
        assert_eq!(
            call_rpc(&mut client, rpc, "stranger", true).await,
            Code::Unauthenticated,
            "{rpc}"
        );
    }
}
contract_test!(token_scopes_limit_each_rpc);

#[test]
fn an_unknown_scope_stops_start_up_naming_the_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("tokens");
    std::fs::write(&path, "# ops\nadmin\nreader read,admin\n").expect("tokens file");
    let err = BearerTokens::from_file(&path).expect_err("unknown scope");
    let message = err.to_string();
    assert!(
        message.contains("line 3") && message.contains("\"admin\""),
        "{message}"
    );
}

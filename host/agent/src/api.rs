//! The agent's HTTP API (`/api/v1/...`), `/metrics` and the status page (`/`).
//!
//! Every agent serves it. Reads answer from this agent's view (`/status` asks the master when
//! this agent is not it, so `halo status` shows the cluster's truth from any host). Writes go
//! to the master — a non-master forwards them with the same token and says so in
//! `forwarded-to` — except stopping a VM, which goes to the host it runs on, and reloading
//! plugins, which every agent does for itself (and asks its peers to do).
//!
//! Auth: `Authorization: Bearer <token>` on everything but the status page itself (its script
//! asks for the token). Bodies are JSON with no unknown fields; a bad one gets a 400 naming the
//! field. The document of it all is `docs/openapi.json`, served at `/api/v1/openapi.json`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use halo_core::capacity::AdmissionVerdict;
use halo_core::node::ClusterStatus;
use halo_core::settings::{DomainFacts, ProtectError, ProtectRequest, protection_spec};
use halo_core::{Command, Event, EventKind, Severity};
use halo_policy::RestartPriority;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::AgentConfig;
use crate::handle::{AgentHandle, NotTaken, Snapshot};

/// The OpenAPI document.
pub const OPENAPI: &str = include_str!("../../../docs/openapi.json");
const STATUS_PAGE: &str = include_str!("status.html");
/// Marks a request an agent forwarded (it is never forwarded again).
const FORWARDED: &str = "x-halo-forwarded";
/// A forwarded request gives up after this.
const PEER_TIMEOUT: Duration = Duration::from_secs(10);
/// A read fanned out to every peer (events of the whole cluster) gives up after this.
const PEER_READ_TIMEOUT: Duration = Duration::from_secs(2);

struct Api {
    agent: AgentHandle,
    config: Arc<AgentConfig>,
    /// The admin token: every read and every action.
    token: String,
    /// The read-only token (`api.read-token-file`): reads only.
    read_token: Option<String>,
    peers: BTreeMap<String, String>,
    failures: AuthFailures,
    /// How agents reach each other's API: TLS verified against `[api] ca-file`, or plain.
    tls_client: Option<crate::tls::TlsClient>,
}

/// Who a request's token says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// The admin token (`api.token-file`).
    Admin,
    /// The read-only token (`api.read-token-file`).
    ReadOnly,
}

impl Role {
    /// The wire name (in audit records).
    fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::ReadOnly => "read-only",
        }
    }
}

/// Failed authentications: counted, and answered more slowly the more a client fails (per
/// address, within a minute: 250 ms doubling to 4 s), so guessing a token is slow.
#[derive(Default)]
struct AuthFailures {
    total: std::sync::atomic::AtomicU64,
    recent: std::sync::Mutex<BTreeMap<std::net::IpAddr, (u32, std::time::Instant)>>,
}

/// Clients remembered for slowing down (the oldest forgotten first beyond this).
const MAX_FAILING_CLIENTS: usize = 4_096;

impl AuthFailures {
    /// Notes a failure from `client`; how long to wait before answering.
    fn failed(&self, client: Option<std::net::IpAddr>) -> Duration {
        self.total.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Some(client) = client else { return Duration::from_millis(250) };
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        recent.retain(|_, (_, at)| now.duration_since(*at) < Duration::from_secs(60));
        if recent.len() >= MAX_FAILING_CLIENTS
            && let Some(oldest) = recent.iter().min_by_key(|(_, (_, at))| *at).map(|(ip, _)| *ip)
        {
            recent.remove(&oldest);
        }
        let entry = recent.entry(client).or_insert((0, now));
        *entry = (entry.0.saturating_add(1), now);
        Duration::from_millis(250) * 2u32.saturating_pow(entry.0.saturating_sub(1).min(4))
    }

    /// A client that authenticated starts afresh.
    fn succeeded(&self, client: Option<std::net::IpAddr>) {
        if let Some(client) = client {
            let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            recent.remove(&client);
        }
    }

    fn total(&self) -> u64 {
        self.total.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Whether a request acts on the cluster (the admin token only). Every POST does, but the
/// libvirt hook's question (`/api/v1/admission`), which only asks.
fn is_action(method: &Method, path: &str) -> bool {
    method != Method::GET && method != Method::HEAD && path != "/api/v1/admission"
}

type Ctx = State<Arc<Api>>;

/// An answer with an HTTP status and a JSON body.
struct Reply(StatusCode, Value);

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        (self.0, axum::Json(self.1)).into_response()
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Reply {
    Reply(status, json!({ "error": message.into() }))
}

fn ok(value: Value) -> Reply {
    Reply(StatusCode::OK, value)
}

/// Binds `api.listen` and serves in the background. Fails if the address cannot be bound.
pub async fn serve(agent: AgentHandle, config: Arc<AgentConfig>) -> std::io::Result<()> {
    let Some(api) = config.api.clone() else { return Ok(()) };
    let token = config.api_token().unwrap_or_default();
    let read_token = config.api_read_token();
    let peers = config.api_addresses().into_iter().map(|(h, a)| (h, a.to_string())).collect();
    let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
    let server_tls = match (&api.cert_file, &api.key_file) {
        (Some(cert), Some(key)) => Some(crate::tls::server_config(cert, key).map_err(invalid)?),
        _ => None,
    };
    let tls_client =
        config.api_trust_file().map(|ca| crate::tls::TlsClient::trusting(&ca)).transpose().map_err(invalid)?;
    let listener = tokio::net::TcpListener::bind(api.listen).await?;
    let api_state = Api { agent, config, token, read_token, peers, failures: AuthFailures::default(), tls_client };
    let app = router(Arc::new(api_state));
    match server_tls {
        Some(tls) => {
            tracing::info!("API, status page and /metrics on https://{}", api.listen);
            tokio::spawn(serve_tls(listener, app, tls));
        }
        None => {
            tracing::warn!("API, status page and /metrics on plain http://{} ([api] plain-http = true)", api.listen);
            tokio::spawn(async move {
                let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::error!("API server stopped: {e}");
                }
            });
        }
    }
    Ok(())
}

/// Serves `app` over TLS on `listener`: each connection's handshake (at most 10 s) on a task of
/// its own, then HTTP/1.1; a client that fails the handshake is dropped.
async fn serve_tls(listener: tokio::net::TcpListener, app: Router, tls: Arc<rustls::ServerConfig>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!("API: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return tracing::debug!(%remote, "API: TLS handshake refused: {e}"),
                Err(_) => return tracing::debug!(%remote, "API: no TLS handshake within 10 s"),
            };
            let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(axum::extract::ConnectInfo(remote));
                let mut app = app.clone();
                async move { tower_service::Service::call(&mut app, request).await }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await {
                tracing::debug!(%remote, "API connection: {e}");
            }
        });
    }
}

fn router(api: Arc<Api>) -> Router {
    let authed = Router::new()
        .route("/api/v1/status", get(status))
        .route("/api/v1/hosts", get(hosts))
        .route("/api/v1/vms", get(vms))
        .route("/api/v1/vms/{vm}/diagnose", get(diagnose))
        .route("/api/v1/vms/{vm}/protect", post(protect))
        .route("/api/v1/vms/{vm}/unprotect", post(unprotect))
        .route("/api/v1/vms/{vm}/stop", post(stop))
        .route("/api/v1/vms/{vm}/migrate", post(migrate))
        .route("/api/v1/vms/{vm}/storage", post(move_storage))
        .route("/api/v1/vms/{vm}/start", post(start))
        .route("/api/v1/hosts/{host}/maintenance", post(maintenance))
        .route("/api/v1/hosts/{host}/fence", post(fence))
        .route("/api/v1/plan", get(plan))
        .route("/api/v1/balance", get(balance_plan))
        .route("/api/v1/balance/apply", post(balance_apply))
        .route("/api/v1/events", get(events))
        .route("/api/v1/alerts", get(alerts))
        .route("/api/v1/incidents", get(incidents))
        .route("/api/v1/ha", post(ha))
        .route("/api/v1/plugins", get(plugins))
        .route("/api/v1/plugins/reload", post(reload))
        .route("/api/v1/plugins/promote", post(promote))
        .route("/api/v1/admission", post(admission))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(Arc::clone(&api), auth));
    Router::new()
        .route("/", get(|| async { Html(STATUS_PAGE) }))
        .route("/api/v1/openapi.json", get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }))
        .merge(authed)
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint (see /api/v1/openapi.json)") })
        .with_state(api)
}

/// Authentication and roles: the admin token may do everything, the read-only token every
/// read; a wrong or missing token gets a 401 after a delay that grows with the client's recent
/// failures. Every action is recorded in the event log with the role that asked.
async fn auth(State(api): Ctx, request: Request, next: Next) -> Response {
    let client = request.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0);
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let matches = |token: &str| !token.is_empty() && constant_time_eq(given.as_bytes(), token.as_bytes());
    let role = if matches(&api.token) {
        Role::Admin
    } else if api.read_token.as_deref().is_some_and(matches) {
        Role::ReadOnly
    } else {
        let delay = api.failures.failed(client.map(|c| c.ip()));
        tokio::time::sleep(delay).await;
        let why = if given.is_empty() { "missing bearer token" } else { "wrong bearer token" };
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            axum::Json(json!({ "error": format!("{why}: send Authorization: Bearer <the token of api.token-file>") })),
        )
            .into_response();
    };
    api.failures.succeeded(client.map(|c| c.ip()));
    let (method, path) = (request.method().clone(), request.uri().path().to_string());
    if !is_action(&method, &path) {
        return next.run(request).await;
    }
    if role == Role::ReadOnly {
        return error(
            StatusCode::FORBIDDEN,
            format!("{method} {path}: this token is read-only (api.read-token-file); actions need the admin token (api.token-file)"),
        )
        .into_response();
    }
    let forwarded_by = request.headers().get(FORWARDED).and_then(|v| v.to_str().ok()).map(String::from);
    let response = next.run(request).await;
    let from = match (&forwarded_by, client) {
        (Some(host), _) => format!("forwarded by {host}"),
        (None, Some(client)) => format!("from {}", client.ip()),
        (None, None) => "from an unknown address".to_string(),
    };
    api.agent
        .audit(Event {
            at: 0,
            node: api.agent.me().to_string(),
            severity: Severity::Info,
            kind: EventKind::ApiAction,
            message: format!("{} token: {method} {path} {from}: {}", role.name(), response.status().as_u16()),
            trace: None,
        })
        .await;
    response
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Parses a JSON body strictly; an empty body is `{}`.
fn body<T: for<'de> Deserialize<'de>>(bytes: &Bytes) -> Result<T, Reply> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) { b"{}" } else { bytes };
    serde_json::from_slice(bytes).map_err(|e| error(StatusCode::BAD_REQUEST, format!("bad request body: {e}")))
}

/// What the agent loop published last (every 100 ms and after every request it handled): read
/// without asking the loop, so the API and `/metrics` never queue behind it.
async fn snapshot(api: &Api) -> Result<Arc<Snapshot>, Reply> {
    Ok(api.agent.snapshot())
}

async fn current(api: &Api) -> Result<ClusterStatus, Reply> {
    snapshot(api).await.map(|s| s.status.clone())
}

/// Sends a request to `host`'s agent (marked as forwarded) and relays its answer.
async fn forward(api: &Api, host: &str, method: &Method, path_and_query: &str, body: Option<Vec<u8>>) -> Reply {
    forward_within(api, host, method, path_and_query, body, PEER_TIMEOUT).await
}

/// [`forward`] with its own time limit.
async fn forward_within(
    api: &Api,
    host: &str,
    method: &Method,
    path_and_query: &str,
    body: Option<Vec<u8>>,
    timeout: Duration,
) -> Reply {
    let Some(address) = api.peers.get(host) else {
        return error(StatusCode::SERVICE_UNAVAILABLE, format!("no API address known for {host}"));
    };
    match crate::client::request(
        address,
        api.tls_client.as_ref(),
        method.as_str(),
        path_and_query,
        Some(&api.token),
        body,
        &[(FORWARDED, api.agent.me())],
        timeout,
    )
    .await
    {
        Ok(r) => {
            let mut value: Value =
                serde_json::from_slice(&r.body).unwrap_or_else(|_| json!({ "raw": String::from_utf8_lossy(&r.body) }));
            if let Value::Object(map) = &mut value {
                map.insert("forwarded-to".into(), json!(host));
            }
            Reply(StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_GATEWAY), value)
        }
        Err(e) => error(StatusCode::BAD_GATEWAY, format!("forwarding to {host}: {e}")),
    }
}

/// Where a write goes: `Ok(None)` here, `Ok(Some(host))` forward, `Err` nowhere.
fn route_to(api: &Api, headers: &HeaderMap, target: Option<&str>, what: &str) -> Result<Option<String>, Reply> {
    let Some(target) = target else {
        return Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{what}: no master is elected yet; try again in a few seconds"),
        ));
    };
    if target == api.agent.me() {
        return Ok(None);
    }
    if headers.contains_key(FORWARDED) {
        return Err(error(
            StatusCode::CONFLICT,
            format!("{what}: {} is not the right agent for this (it is {target}); ask again", api.agent.me()),
        ));
    }
    Ok(Some(target.to_string()))
}

async fn master_of(api: &Api) -> Option<String> {
    current(api).await.ok()?.master
}

/// Runs a command in the agent loop and answers with the events it caused (409 with the
/// reason when the core refused it).
async fn command(api: &Api, command: Command) -> Reply {
    let events: Vec<Event> = match api.agent.command(command).await {
        Ok(events) => events,
        Err(e) => return not_taken(e),
    };
    if let Some(refusal) = events.iter().find(|e| e.kind.refuses_command(e.severity)) {
        return Reply(StatusCode::CONFLICT, json!({ "error": refusal.message, "events": events }));
    }
    ok(json!({ "events": events }))
}

/// The agent loop did not take a request: 503, with whether it is busy or stopping.
fn not_taken(e: NotTaken) -> Reply {
    tracing::warn!("an API request was not taken: {e}");
    error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusQuery {
    #[serde(default)]
    local: bool,
}

async fn status(State(api): Ctx, headers: HeaderMap, Query(q): Query<StatusQuery>) -> Reply {
    let status = match current(&api).await {
        Ok(s) => s,
        Err(e) => return e,
    };
    if !q.local
        && !headers.contains_key(FORWARDED)
        && let Some(master) = status.master.as_deref()
        && master != api.agent.me()
    {
        let answer =
            forward_within(&api, master, &Method::GET, "/api/v1/status?local=true", None, PEER_READ_TIMEOUT).await;
        if answer.0 == StatusCode::OK {
            return answer;
        }
    }
    ok(serde_json::to_value(status).unwrap_or_default())
}

async fn hosts(State(api): Ctx) -> Reply {
    match current(&api).await {
        Ok(s) => ok(serde_json::to_value(s.hosts).unwrap_or_default()),
        Err(e) => e,
    }
}

async fn vms(State(api): Ctx) -> Reply {
    match current(&api).await {
        Ok(s) => ok(serde_json::to_value(s.vms).unwrap_or_default()),
        Err(e) => e,
    }
}

/// Finds a domain on the cluster's hosts (where it runs, else where it is defined): host and XML.
async fn find_domain(config: &AgentConfig, vm: &str) -> Result<Option<(String, String, bool)>, String> {
    let mut uris: Vec<(String, String)> =
        config.hosts.iter().map(|h| (h.name.clone(), h.libvirt_uri.clone())).collect();
    for (host, uri) in uris.iter_mut() {
        if *host == config.host {
            *uri = config.libvirt.local_uri.clone();
        }
    }
    let vm = vm.to_string();
    tokio::task::spawn_blocking(move || {
        let mut defined = None;
        let mut unreachable = Vec::new();
        for (host, uri) in uris {
            let hv = match halo_libvirt::Hypervisor::connect_with_timeout(&uri, Duration::from_secs(3)) {
                Ok(hv) => hv,
                Err(e) => {
                    unreachable.push(format!("{host}: {e}"));
                    continue;
                }
            };
            let Ok(Some(state)) = hv.state(&vm) else { continue };
            let Ok(xml) = hv.definition(&vm) else { continue };
            if state.is_active() {
                return Ok(Some((host, xml, true)));
            }
            defined.get_or_insert((host, xml, false));
        }
        match defined {
            Some(found) => Ok(Some(found)),
            None if unreachable.is_empty() => Ok(None),
            None => Err(format!("not found on the hosts that answered; no answer from {}", unreachable.join("; "))),
        }
    })
    .await
    .map_err(|e| e.to_string())?
}

/// What the domain's XML says about protecting it, against this cluster's shared storage.
fn protectability(config: &AgentConfig, xml: &str) -> halo_libvirt::Protectability {
    let shared: Vec<String> = config.libvirt.shared_storage.iter().map(|p| p.display().to_string()).collect();
    halo_libvirt::protectability(xml, &shared.iter().map(String::as_str).collect::<Vec<_>>())
}

async fn diagnose(State(api): Ctx, Path(vm): Path<String>) -> Reply {
    let found = match find_domain(&api.config, &vm).await {
        Ok(Some(found)) => found,
        Ok(None) => return error(StatusCode::NOT_FOUND, format!("no host has a domain named {vm}")),
        Err(e) => return error(StatusCode::BAD_GATEWAY, format!("{vm}: {e}")),
    };
    let (host, xml, running) = found;
    let p = protectability(&api.config, &xml);
    let protected = current(&api).await.is_ok_and(|s| s.vms.iter().any(|v| v.name == vm && v.protected));
    ok(json!({
        "vm": vm, "host": host, "running": running, "memory-mib": p.memory_mib, "vcpus": p.vcpus,
        "protected": protected, "protectable": p.problems.is_empty(), "problems": p.problems,
    }))
}

/// The body of protect: every field optional (kept from the VM's current settings, or the
/// defaults: priority `restart`, order 0).
async fn protect(State(api): Ctx, headers: HeaderMap, Path(vm): Path<String>, bytes: Bytes) -> Reply {
    let request: ProtectRequest = match body(&bytes) {
        Ok(b) => b,
        Err(e) => return e,
    };
    if request.priority == Some(RestartPriority::Unprotected) {
        return error(StatusCode::BAD_REQUEST, "priority `unprotected`: use POST /api/v1/vms/{vm}/unprotect");
    }
    set_protection(&api, &headers, &vm, request, bytes, "protect").await
}

async fn unprotect(State(api): Ctx, headers: HeaderMap, Path(vm): Path<String>, bytes: Bytes) -> Reply {
    if let Err(e) = body::<EmptyBody>(&bytes) {
        return e;
    }
    set_protection(&api, &headers, &vm, ProtectRequest::unprotect(), bytes, "unprotect").await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmptyBody {}

async fn set_protection(
    api: &Api,
    headers: &HeaderMap,
    vm: &str,
    request: ProtectRequest,
    bytes: Bytes,
    verb: &str,
) -> Reply {
    match route_to(api, headers, master_of(api).await.as_deref(), &format!("{verb} {vm}")) {
        Err(e) => return e,
        Ok(Some(master)) => {
            return forward(api, &master, &Method::POST, &format!("/api/v1/vms/{vm}/{verb}"), Some(bytes.to_vec()))
                .await;
        }
        Ok(None) => {}
    }
    let in_force = match snapshot(api).await {
        Ok(s) => Arc::clone(&s.config),
        Err(e) => return e,
    };
    let (host, xml, running) = match find_domain(&api.config, vm).await {
        Ok(Some(found)) => found,
        Ok(None) => return error(StatusCode::NOT_FOUND, format!("no host has a domain named {vm}")),
        Err(e) => return error(StatusCode::BAD_GATEWAY, format!("{vm}: {e}")),
    };
    let found = protectability(&api.config, &xml);
    let domain = DomainFacts {
        memory_mib: found.memory_mib,
        vcpus: found.vcpus,
        problems: found.problems,
        datastores: api.config.datastores_of_disks(&xml),
    };
    let spec = match protection_spec(vm, request, &in_force, &domain, verb == "unprotect") {
        Ok(spec) => spec,
        Err(e @ ProtectError::NotProtectable { .. }) => {
            return Reply(
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({ "error": e.to_string(), "problems": domain.problems }),
            );
        }
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let priority = spec.priority;
    let mut warning = None;
    if priority != RestartPriority::Unprotected {
        match api.agent.admit(spec.clone(), Some(host.clone())).await {
            Ok(Some(AdmissionVerdict::Refused(why))) => return error(StatusCode::CONFLICT, why),
            Ok(Some(AdmissionVerdict::Warned(why))) => warning = Some(why),
            Ok(Some(AdmissionVerdict::Admitted)) => {}
            Ok(None) => return error(StatusCode::SERVICE_UNAVAILABLE, "this agent is no longer the master; ask again"),
            Err(e) => return not_taken(e),
        }
    }
    let record = halo_datastore::ProtectedVm {
        name: vm.to_string(),
        domain_xml: xml,
        spec: Some(spec.clone()),
        revision: crate::events::unix_ms(),
    };
    let failures = match store_everywhere(api, |store| {
        let record = record.clone();
        async move { store.put_protected_vm(&record).await }
    })
    .await
    {
        Ok(failures) => failures,
        Err(e) => return e,
    };
    // Answer once this agent applies it and (for a running VM) hears where it runs, so the
    // next `halo status` shows it.
    for _ in 0..50 {
        if current(api).await.is_ok_and(|s| {
            s.vms.iter().any(|v| v.name == vm && v.priority == priority && (v.host.is_some() || !running))
        }) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ok(json!({ "vm": spec, "host": host, "warning": warning, "datastore-failures": failures }))
}

/// Writes a run-time change to every datastore and wakes the catalog task to apply it. Done
/// when at least one datastore took it (the others are named); refused when none did.
async fn store_everywhere<F, Fut>(api: &Api, write: F) -> Result<Vec<String>, Reply>
where
    F: Fn(Arc<halo_datastore::Datastore>) -> Fut,
    Fut: std::future::Future<Output = Result<(), halo_datastore::DatastoreError>>,
{
    let mut written = 0;
    let mut failures = Vec::new();
    for store in api.agent.datastores() {
        match write(Arc::clone(store)).await {
            Ok(()) => written += 1,
            Err(e) => failures.push(e.to_string()),
        }
    }
    if written == 0 {
        return Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no datastore took the change: {}", failures.join("; ")),
        ));
    }
    api.agent.refresh_catalog();
    Ok(failures)
}

async fn stop(State(api): Ctx, headers: HeaderMap, Path(vm): Path<String>, bytes: Bytes) -> Reply {
    if let Err(e) = body::<EmptyBody>(&bytes) {
        return e;
    }
    let status = match current(&api).await {
        Ok(s) => s,
        Err(e) => return e,
    };
    let Some(entry) = status.vms.iter().find(|v| v.name == vm) else {
        return error(StatusCode::NOT_FOUND, format!("halo knows no VM named {vm}"));
    };
    match route_to(&api, &headers, entry.host.as_deref(), &format!("stop {vm}")) {
        Err(_) if entry.host.is_none() => {
            error(StatusCode::CONFLICT, format!("{vm} runs on no host this agent hears of"))
        }
        Err(e) => e,
        Ok(Some(host)) => {
            forward(&api, &host, &Method::POST, &format!("/api/v1/vms/{vm}/stop"), Some(bytes.to_vec())).await
        }
        Ok(None) => {
            let answer = command(&api, Command::StopVm(vm.clone())).await;
            if answer.0 == StatusCode::OK {
                // Answer once it is off (the power-off runs in the driver).
                for _ in 0..300 {
                    let here = |s: ClusterStatus| {
                        s.vms.iter().any(|v| v.name == vm && v.host.as_deref() == Some(api.agent.me()))
                    };
                    if !current(&api).await.is_ok_and(here) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            answer
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MigrateBody {
    /// None: to the cluster (the placement policy chooses).
    #[serde(default)]
    host: Option<String>,
}

async fn migrate(State(api): Ctx, headers: HeaderMap, Path(vm): Path<String>, bytes: Bytes) -> Reply {
    let request: MigrateBody = match body(&bytes) {
        Ok(b) => b,
        Err(e) => return e,
    };
    match route_to(&api, &headers, master_of(&api).await.as_deref(), &format!("migrate {vm}")) {
        Err(e) => e,
        Ok(Some(m)) => {
            forward(&api, &m, &Method::POST, &format!("/api/v1/vms/{vm}/migrate"), Some(bytes.to_vec())).await
        }
        Ok(None) => command(&api, Command::MigrateVm { vm, to: request.host }).await,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StorageBody {
    /// The target directory.
    path: String,
}

async fn move_storage(State(api): Ctx, headers: HeaderMap, Path(vm): Path<String>, bytes: Bytes) -> Reply {
    let request: StorageBody = match body(&bytes) {
        Ok(b) => b,
        Err(e) => return e,
    };
    match route_to(&api, &headers, master_of(&api).await.as_deref(), &format!("move storage of {vm}")) {
        Err(e) => e,
        Ok(Some(m)) => {
            forward(&api, &m, &Method::POST, &format!("/api/v1/vms/{vm}/storage"), Some(bytes.to_vec())).await
        }
        Ok(None) => command(&api, Command::MoveStorage { vm, dir: request.path }).await,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartBody {
    #[serde(default)]
    on: Option<String>,
}

/// `halo vm start`: the master starts a protected VM that runs nowhere, under a new claim.
async fn start(State(api): Ctx, headers: HeaderMap, Path(vm): Path<String>, bytes: Bytes) -> Reply {
    let request: StartBody = match body(&bytes) {
        Ok(b) => b,
        Err(e) => return e,
    };
    match route_to(&api, &headers, master_of(&api).await.as_deref(), &format!("start {vm}")) {
        Err(e) => e,
        Ok(Some(m)) => forward(&api, &m, &Method::POST, &format!("/api/v1/vms/{vm}/start"), Some(bytes.to_vec())).await,
        Ok(None) => command(&api, Command::StartVm { vm, on: request.on }).await,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MaintenanceBody {
    enter: bool,
}

async fn maintenance(State(api): Ctx, headers: HeaderMap, Path(host): Path<String>, bytes: Bytes) -> Reply {
    let request: MaintenanceBody = match body(&bytes) {
        Ok(b) => b,
        Err(e) => return e,
    };
    if !api.config.hosts.iter().any(|h| h.name == host) {
        return error(StatusCode::NOT_FOUND, format!("no host named {host}"));
    }
    match route_to(&api, &headers, master_of(&api).await.as_deref(), &format!("maintenance of {host}")) {
        Err(e) => e,
        Ok(Some(m)) => {
            forward(&api, &m, &Method::POST, &format!("/api/v1/hosts/{host}/maintenance"), Some(bytes.to_vec())).await
        }
        Ok(None) if request.enter => command(&api, Command::EnterMaintenance(host)).await,
        Ok(None) => command(&api, Command::ExitMaintenance(host)).await,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FenceBody {
    #[serde(default)]
    force: bool,
}

async fn fence(State(api): Ctx, headers: HeaderMap, Path(host): Path<String>, bytes: Bytes) -> Reply {
    let request: FenceBody = match body(&bytes) {
        Ok(b) => b,
        Err(e) => return e,
    };
    if !api.config.hosts.iter().any(|h| h.name == host) {
        return error(StatusCode::NOT_FOUND, format!("no host named {host}"));
    }
    match route_to(&api, &headers, master_of(&api).await.as_deref(), &format!("fencing {host}")) {
        Err(e) => e,
        Ok(Some(m)) => {
            forward(&api, &m, &Method::POST, &format!("/api/v1/hosts/{host}/fence"), Some(bytes.to_vec())).await
        }
        Ok(None) => command(&api, Command::FenceHost { host, force: request.force }).await,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanQuery {
    #[serde(default)]
    fail: Option<String>,
}

async fn plan(State(api): Ctx, headers: HeaderMap, Query(q): Query<PlanQuery>) -> Reply {
    let failed: Vec<String> =
        q.fail.as_deref().unwrap_or("").split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect();
    if let Some(unknown) = failed.iter().find(|h| !api.config.hosts.iter().any(|e| &e.name == *h)) {
        return error(StatusCode::BAD_REQUEST, format!("fail: no host named {unknown}"));
    }
    let query = if failed.is_empty() { String::new() } else { format!("?fail={}", failed.join(",")) };
    match route_to(&api, &headers, master_of(&api).await.as_deref(), "the failover plan") {
        Err(e) => e,
        Ok(Some(m)) => forward(&api, &m, &Method::GET, &format!("/api/v1/plan{query}"), None).await,
        Ok(None) => {
            let plan = match current(&api).await {
                Ok(s) => s.plan,
                Err(e) => return e,
            };
            let what_if = if failed.is_empty() {
                None
            } else {
                match api.agent.what_if(failed).await {
                    Ok(what_if) => what_if,
                    Err(e) => return not_taken(e),
                }
            };
            ok(json!({ "plan": plan, "what-if": what_if }))
        }
    }
}

/// What balancing would move now, and why (the master's answer).
async fn balance_plan(State(api): Ctx, headers: HeaderMap) -> Reply {
    match route_to(&api, &headers, master_of(&api).await.as_deref(), "the balancing plan") {
        Err(e) => e,
        Ok(Some(m)) => forward(&api, &m, &Method::GET, "/api/v1/balance", None).await,
        Ok(None) => match api.agent.balance_plan().await {
            Ok(Some(proposal)) => ok(json!({ "mode": api.config.balance.mode, "proposal": proposal })),
            Ok(None) => error(StatusCode::SERVICE_UNAVAILABLE, "this agent is no longer the master; ask again"),
            Err(e) => not_taken(e),
        },
    }
}

/// `halo balance apply`: the master carries out a proposal now; watch `balance-move` and
/// `balance-done` in the events.
async fn balance_apply(State(api): Ctx, headers: HeaderMap, bytes: Bytes) -> Reply {
    if let Err(e) = body::<EmptyBody>(&bytes) {
        return e;
    }
    match route_to(&api, &headers, master_of(&api).await.as_deref(), "balancing") {
        Err(e) => e,
        Ok(Some(m)) => forward(&api, &m, &Method::POST, "/api/v1/balance/apply", Some(bytes.to_vec())).await,
        Ok(None) => command(&api, Command::BalanceApply).await,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    #[serde(default)]
    since: u64,
    #[serde(default = "default_limit")]
    limit: usize,
    /// Every reachable agent's events, merged by wall clock.
    #[serde(default)]
    cluster: bool,
}

fn default_limit() -> usize {
    100
}

async fn events(State(api): Ctx, headers: HeaderMap, Query(q): Query<EventsQuery>) -> Reply {
    list_events(&api, &headers, q, false).await
}

async fn alerts(State(api): Ctx, headers: HeaderMap, Query(q): Query<EventsQuery>) -> Reply {
    list_events(&api, &headers, q, true).await
}

async fn list_events(api: &Arc<Api>, headers: &HeaderMap, q: EventsQuery, alerts_only: bool) -> Reply {
    let mut all: Vec<Value> = api
        .agent
        .events()
        .list(q.since, q.limit, alerts_only)
        .into_iter()
        .filter_map(|e| serde_json::to_value(e).ok())
        .collect();
    let mut unreachable = Vec::new();
    if q.cluster && !headers.contains_key(FORWARDED) {
        // Every peer at once, briefly: a dead host must not hold up the status page.
        let path = format!("/api/v1/{}?limit={}", if alerts_only { "alerts" } else { "events" }, q.limit);
        let mut asked = tokio::task::JoinSet::new();
        for host in api.peers.keys().filter(|h| h.as_str() != api.agent.me()).cloned() {
            let (api, path) = (Arc::clone(api), path.clone());
            asked.spawn(async move {
                let answer = forward_within(&api, &host, &Method::GET, &path, None, PEER_READ_TIMEOUT).await;
                (host, answer)
            });
        }
        while let Some(Ok((host, answer))) = asked.join_next().await {
            match answer.1.get("events").and_then(Value::as_array) {
                Some(events) if answer.0 == StatusCode::OK => all.extend(events.iter().cloned()),
                _ => unreachable.push(host),
            }
        }
        unreachable.sort();
        all.sort_by_key(|e| e.get("unix-ms").and_then(Value::as_u64).unwrap_or(0));
        let skip = all.len().saturating_sub(q.limit);
        all.drain(..skip);
    }
    ok(json!({ "events": all, "unreachable": unreachable }))
}

/// Every failover in the cluster's recent events (the newest 2,000 of every reachable agent):
/// its steps from the host's last heartbeat to its last VM running again, times on the wall
/// clock (ms since the Unix epoch) of the agent that recorded each event.
async fn incidents(State(api): Ctx, headers: HeaderMap) -> Reply {
    let query = EventsQuery { since: 0, limit: 2_000, cluster: true };
    let Reply(status, listed) = list_events(&api, &headers, query, false).await;
    if status != StatusCode::OK {
        return Reply(status, listed);
    }
    let events = listed.get("events").and_then(Value::as_array).cloned().unwrap_or_default();
    let parsed: Vec<(u64, EventKind, String, Option<String>)> = events
        .iter()
        .filter_map(|e| {
            let kind: EventKind = e.get("kind")?.as_str()?.parse().ok()?;
            let at = e.get("unix-ms")?.as_u64()?;
            let message = e.get("message")?.as_str()?.to_string();
            Some((at, kind, message, e.get("trace").and_then(Value::as_str).map(String::from)))
        })
        .collect();
    let seen: Vec<halo_core::incidents::Seen> = parsed
        .iter()
        .map(|(at, kind, message, trace)| halo_core::incidents::Seen {
            at: *at,
            kind: *kind,
            message,
            trace: trace.as_deref(),
        })
        .collect();
    let found: Vec<Value> = halo_core::incidents::incidents(&seen)
        .into_iter()
        .map(|i| {
            let took = i.took_ms();
            let mut value = json!(i);
            value["took-ms"] = json!(took);
            value
        })
        .collect();
    ok(json!({ "incidents": found, "unreachable": listed.get("unreachable").cloned().unwrap_or(json!([])) }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HaBody {
    enabled: bool,
}

async fn ha(State(api): Ctx, headers: HeaderMap, bytes: Bytes) -> Reply {
    let request: HaBody = match body(&bytes) {
        Ok(b) => b,
        Err(e) => return e,
    };
    match route_to(&api, &headers, master_of(&api).await.as_deref(), "HA on/off") {
        Err(e) => return e,
        Ok(Some(m)) => return forward(&api, &m, &Method::POST, "/api/v1/ha", Some(bytes.to_vec())).await,
        Ok(None) => {}
    }
    let settings =
        halo_datastore::ClusterSettings { ha_enabled: Some(request.enabled), revision: crate::events::unix_ms() };
    let failures = match store_everywhere(&api, |store| {
        let settings = settings.clone();
        async move { store.put_settings(&settings).await }
    })
    .await
    {
        Ok(failures) => failures,
        Err(e) => return e,
    };
    for _ in 0..50 {
        if current(&api).await.is_ok_and(|s| s.ha_enabled == request.enabled) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ok(json!({ "ha-enabled": request.enabled, "datastore-failures": failures }))
}

/// The libvirt `qemu` hook's question (`halo hook`): may this domain start on this host?
/// Always this host's own answer (never forwarded): it knows what runs where, and reads the
/// claims.
async fn admission(State(api): Ctx, bytes: Bytes) -> Reply {
    let request: halo_core::node::StartRequest = match body(&bytes) {
        Ok(b) => b,
        Err(e) => return e,
    };
    match api.agent.admit_start(request).await {
        Ok(admission) => ok(json!(admission)),
        Err(e) => not_taken(e),
    }
}

async fn plugins(State(api): Ctx) -> Reply {
    match snapshot(&api).await {
        Ok(s) => ok(json!({ "plugins": s.plugins })),
        Err(e) => e,
    }
}

async fn reload(State(api): Ctx, headers: HeaderMap, bytes: Bytes) -> Reply {
    if let Err(e) = body::<EmptyBody>(&bytes) {
        return e;
    }
    let results = match api.agent.reload_plugins().await {
        Ok(results) => results,
        Err(e) => return not_taken(e),
    };
    let mut hosts = BTreeMap::new();
    let failed = results.iter().any(|(_, r)| r.is_err());
    hosts.insert(
        api.agent.me().to_string(),
        json!(
            results
                .into_iter()
                .map(|(w, r)| json!({ "world": w, "ok": r.is_ok(), "detail": r.unwrap_or_else(|e| e) }))
                .collect::<Vec<_>>()
        ),
    );
    let mut all_ok = !failed;
    if !headers.contains_key(FORWARDED) {
        for host in api.peers.keys().filter(|h| h.as_str() != api.agent.me()) {
            let answer = forward(&api, host, &Method::POST, "/api/v1/plugins/reload", None).await;
            all_ok &= answer.0 == StatusCode::OK;
            hosts.insert(host.clone(), answer.1.get("hosts").and_then(|h| h.get(host)).cloned().unwrap_or(answer.1));
        }
    }
    let status = if all_ok { StatusCode::OK } else { StatusCode::CONFLICT };
    Reply(status, json!({ "hosts": hosts }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PromoteBody {
    world: crate::decisions::DecisionWorld,
}

async fn promote(State(api): Ctx, headers: HeaderMap, bytes: Bytes) -> Reply {
    let request = match body::<PromoteBody>(&bytes) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let result = match api.agent.promote(request.world).await {
        Ok(result) => result,
        Err(e) => return not_taken(e),
    };
    let mut all_ok = result.is_ok();
    let mut hosts = BTreeMap::new();
    hosts.insert(
        api.agent.me().to_string(),
        json!({ "world": request.world, "ok": result.is_ok(), "detail": result.unwrap_or_else(|e| e) }),
    );
    if !headers.contains_key(FORWARDED) {
        let forwarded = json!({ "world": request.world }).to_string().into_bytes();
        for host in api.peers.keys().filter(|h| h.as_str() != api.agent.me()) {
            let answer = forward(&api, host, &Method::POST, "/api/v1/plugins/promote", Some(forwarded.clone())).await;
            all_ok &= answer.0 == StatusCode::OK;
            hosts.insert(host.clone(), answer.1.get("hosts").and_then(|h| h.get(host)).cloned().unwrap_or(answer.1));
        }
    }
    let status = if all_ok { StatusCode::OK } else { StatusCode::CONFLICT };
    Reply(status, json!({ "hosts": hosts }))
}

/// Prometheus text format.
async fn metrics(State(api): Ctx) -> Response {
    let snap = match snapshot(&api).await {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let Snapshot { status, plugins, .. } = &*snap;
    let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let mut text = String::new();
    let mut push = |name: &str, kind: &str, help: &str, samples: Vec<String>| {
        let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for s in samples {
            let _ = writeln!(text, "{s}");
        }
    };
    let flag = |b: bool| u8::from(b);
    push("halo_up", "gauge", "The agent runs.", vec!["halo_up 1".into()]);
    push(
        "halo_api_auth_failures_total",
        "counter",
        "API requests refused for a missing or wrong token (each answered after a growing delay).",
        vec![format!("halo_api_auth_failures_total {}", api.failures.total())],
    );
    let live = api.agent.liveness();
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    for (name, kind, help, value) in [
        (
            "halo_liveness_heartbeats_total",
            "counter",
            "Heartbeat rounds the liveness path sent (on every network).",
            load(&live.heartbeats) as f64,
        ),
        (
            "halo_liveness_resent_total",
            "counter",
            "Heartbeat rounds sent again under a new number while the agent loop was busy.",
            load(&live.keepalives) as f64,
        ),
        (
            "halo_liveness_late_rounds_total",
            "counter",
            "Heartbeat rounds later than 1.5 heartbeat intervals.",
            load(&live.late_rounds) as f64,
        ),
        (
            "halo_liveness_longest_interval_seconds",
            "gauge",
            "The longest time between two heartbeat rounds since the agent started.",
            load(&live.longest_interval_us) as f64 / 1e6,
        ),
        (
            "halo_liveness_watchdog_starved_total",
            "counter",
            "Times the agent loop made no step for the fence timeout (the watchdogs went unfed).",
            load(&live.starved) as f64,
        ),
        (
            "halo_liveness_fences_total",
            "counter",
            "Times the liveness path fenced because the agent loop was busy.",
            load(&live.fences) as f64,
        ),
    ] {
        push(name, kind, help, vec![format!("{name} {value}")]);
    }
    push(
        "halo_is_master",
        "gauge",
        "This agent is the master.",
        vec![format!("halo_is_master {}", flag(status.master.as_deref() == Some(status.host.as_str())))],
    );
    push(
        "halo_ha_enabled",
        "gauge",
        "HA is on for the cluster.",
        vec![format!("halo_ha_enabled {}", flag(status.ha_enabled))],
    );
    push("halo_fenced", "gauge", "This host fenced itself.", vec![format!("halo_fenced {}", flag(status.fenced))]);
    push(
        "halo_isolated",
        "gauge",
        "This host declared itself isolated.",
        vec![format!("halo_isolated {}", flag(status.isolation == "isolated"))],
    );
    push(
        "halo_host_state",
        "gauge",
        "1 for each host's current state as this agent sees it.",
        status
            .hosts
            .iter()
            .map(|h| format!("halo_host_state{{host=\"{}\",state=\"{}\"}} 1", esc(&h.name), esc(&h.state)))
            .collect(),
    );
    push(
        "halo_host_datastores_reached",
        "gauge",
        "Datastores each host wrote within the fence timeout (its own count, or its last heartbeat's); compare halo_datastores_configured.",
        status
            .hosts
            .iter()
            .filter_map(|h| {
                Some(format!("halo_host_datastores_reached{{host=\"{}\"}} {}", esc(&h.name), h.datastores_reached?))
            })
            .collect(),
    );
    push(
        "halo_host_health",
        "gauge",
        "Each host's health as its provider reported it: 0 healthy, 1 degraded, 2 failing (proactive HA).",
        status
            .hosts
            .iter()
            .map(|h| format!("halo_host_health{{host=\"{}\"}} {}", esc(&h.name), h.health.state as u8))
            .collect(),
    );
    push(
        "halo_vms_storage_lost",
        "gauge",
        "VMs on this host whose storage is lost (storage protection: waiting, resuming or being restarted elsewhere).",
        status
            .hosts
            .iter()
            .filter(|h| h.state == "this host")
            .map(|h| format!("halo_vms_storage_lost{{host=\"{}\"}} {}", esc(&h.name), h.storage_lost_vms.len()))
            .collect(),
    );
    push(
        "halo_datastores_configured",
        "gauge",
        "Datastores in the configuration.",
        vec![format!("halo_datastores_configured {}", status.hosts.first().map_or(0, |h| h.datastores_configured))],
    );
    push(
        "halo_heartbeat_age_seconds",
        "gauge",
        "Seconds since a heartbeat arrived from the host on the network (absent: never).",
        status
            .hosts
            .iter()
            .flat_map(|h| {
                h.heartbeat_age_ms.iter().filter_map(|(net, age)| {
                    age.map(|a| {
                        format!(
                            "halo_heartbeat_age_seconds{{host=\"{}\",network=\"{}\"}} {:.3}",
                            esc(&h.name),
                            esc(net),
                            a as f64 / 1000.0
                        )
                    })
                })
            })
            .collect(),
    );
    push("halo_vms", "gauge", "VMs halo knows, by protection and whether they run.", {
        let count = |p: bool, r: bool| status.vms.iter().filter(|v| v.protected == p && v.host.is_some() == r).count();
        vec![
            format!("halo_vms{{protected=\"true\",running=\"true\"}} {}", count(true, true)),
            format!("halo_vms{{protected=\"true\",running=\"false\"}} {}", count(true, false)),
            format!("halo_vms{{protected=\"false\",running=\"true\"}} {}", count(false, true)),
            format!("halo_vms{{protected=\"false\",running=\"false\"}} {}", count(false, false)),
        ]
    });
    push(
        "halo_vm_copies",
        "gauge",
        "Hosts reporting each protected VM running: 1 normally, 0 when down, more when a copy was started outside halo.",
        status
            .vms
            .iter()
            .filter(|v| v.protected)
            .map(|v| {
                let copies = if v.copies.is_empty() { usize::from(v.host.is_some()) } else { v.copies.len() };
                format!("halo_vm_copies{{vm=\"{}\"}} {copies}", esc(&v.name))
            })
            .collect(),
    );
    push(
        "halo_fence_device_up",
        "gauge",
        "Whether each host's fence device answered its last status check (master only; 0: fencing that host would fail).",
        status
            .hosts
            .iter()
            .flat_map(|h| {
                h.fence.iter().map(move |d| {
                    format!(
                        "halo_fence_device_up{{host=\"{}\",device=\"{}\"}} {}",
                        esc(&h.name),
                        esc(&d.device),
                        u8::from(d.ok)
                    )
                })
            })
            .collect(),
    );
    // Load, as the master last read it from every host's libvirt (master only).
    let loaded: Vec<(&str, &halo_core::node::HostLoadStatus)> =
        status.hosts.iter().filter_map(|h| Some((h.name.as_str(), h.load.as_ref()?))).collect();
    push(
        "halo_host_free_memory_mib",
        "gauge",
        "Free memory of each host, MiB, from its libvirt (master only).",
        loaded
            .iter()
            .map(|(h, l)| format!("halo_host_free_memory_mib{{host=\"{}\"}} {}", esc(h), l.load.free_memory_mib))
            .collect(),
    );
    push(
        "halo_host_cpu_percent",
        "gauge",
        "CPU use of each host's running VMs together, percent of the host (master only).",
        loaded
            .iter()
            .filter_map(|(h, l)| Some(format!("halo_host_cpu_percent{{host=\"{}\"}} {}", esc(h), l.load.cpu_percent?)))
            .collect(),
    );
    let vm_loads: Vec<(&str, &halo_core::VmLoad)> =
        status.vms.iter().filter_map(|v| Some((v.name.as_str(), v.load.as_ref()?))).collect();
    push(
        "halo_vm_cpu_percent",
        "gauge",
        "CPU use of each running VM over the last reading interval, percent of one thread (master only).",
        vm_loads
            .iter()
            .filter_map(|(vm, l)| Some(format!("halo_vm_cpu_percent{{vm=\"{}\"}} {}", esc(vm), l.cpu_percent?)))
            .collect(),
    );
    push(
        "halo_vm_memory_used_mib",
        "gauge",
        "Memory each running VM uses, MiB (its QEMU's resident memory; master only).",
        vm_loads
            .iter()
            .map(|(vm, l)| format!("halo_vm_memory_used_mib{{vm=\"{}\"}} {}", esc(vm), l.memory_mib))
            .collect(),
    );
    let counts = api.agent.events().counts();
    let restarts: u64 = counts
        .iter()
        .filter(|((k, _), _)| matches!(k, EventKind::VmRestarted | EventKind::VmRestartedInPlace))
        .map(|(_, n)| n)
        .sum();
    push(
        "halo_restarts_total",
        "counter",
        "VMs this agent restarted (as master, or in place).",
        vec![format!("halo_restarts_total {restarts}")],
    );
    push(
        "halo_events_total",
        "counter",
        "Events this agent recorded, by kind and severity.",
        counts
            .iter()
            .map(|((kind, severity), n)| {
                let severity = match severity {
                    Severity::Info => "info",
                    Severity::Warning => "warning",
                    Severity::Alert => "alert",
                };
                format!("halo_events_total{{kind=\"{kind}\",severity=\"{severity}\"}} {n}")
            })
            .collect(),
    );
    push(
        "halo_alert_webhook_failures_total",
        "counter",
        "Alerts the webhook did not take.",
        vec![format!(
            "halo_alert_webhook_failures_total {}",
            api.agent.events().webhook_failures.load(std::sync::atomic::Ordering::Relaxed)
        )],
    );
    if let Some(plan) = &status.plan {
        push(
            "halo_failover_tolerates",
            "gauge",
            "Host failures the cluster survives now.",
            vec![format!("halo_failover_tolerates {}", plan.tolerates)],
        );
        push(
            "halo_failover_target",
            "gauge",
            "ha.host-failures-to-tolerate.",
            vec![format!("halo_failover_target {}", plan.target)],
        );
    }
    push(
        "halo_plugin_calls_total",
        "counter",
        "Decisions asked of each decision point.",
        plugins.iter().map(|p| format!("halo_plugin_calls_total{{world=\"{}\"}} {}", p.world, p.calls)).collect(),
    );
    push(
        "halo_plugin_fallbacks_total",
        "counter",
        "Decisions the built-in policy gave because the plugin failed.",
        plugins
            .iter()
            .map(|p| format!("halo_plugin_fallbacks_total{{world=\"{}\"}} {}", p.world, p.fallbacks))
            .collect(),
    );
    push(
        "halo_plugin_failures_total",
        "counter",
        "Plugin failures by kind.",
        plugins
            .iter()
            .flat_map(|p| {
                p.failures
                    .iter()
                    .map(move |(k, n)| format!("halo_plugin_failures_total{{world=\"{}\",kind=\"{k}\"}} {n}", p.world))
            })
            .collect(),
    );
    push(
        "halo_plugin_decision_seconds_total",
        "counter",
        "Time spent deciding (divide by halo_plugin_calls_total for the mean latency).",
        plugins
            .iter()
            .map(|p| format!("halo_plugin_decision_seconds_total{{world=\"{}\"}} {:.6}", p.world, p.seconds))
            .collect(),
    );
    push(
        "halo_shadow_decisions_total",
        "counter",
        "Real decisions a shadow candidate also answered (never acted on).",
        plugins
            .iter()
            .filter_map(|p| p.shadow.as_ref().map(|s| (p, s)))
            .map(|(p, s)| format!("halo_shadow_decisions_total{{world=\"{}\"}} {}", p.world, s.count.decisions))
            .collect(),
    );
    push(
        "halo_shadow_divergences_total",
        "counter",
        "Decisions where the shadow candidate would have answered otherwise, by verdict.",
        plugins
            .iter()
            .filter_map(|p| p.shadow.as_ref().map(|s| (p, s)))
            .flat_map(|(p, s)| {
                [("different", s.count.different), ("invalid", s.count.invalid), ("failed", s.count.failed)]
                    .into_iter()
                    .map(move |(verdict, n)| {
                        format!("halo_shadow_divergences_total{{world=\"{}\",verdict=\"{verdict}\"}} {n}", p.world)
                    })
            })
            .collect(),
    );
    let decisions = api.agent.decision_stats();
    push(
        "halo_decisions_recorded_total",
        "counter",
        "Policy decisions written to the decision record ([plugins] decisions-dir).",
        vec![format!(
            "halo_decisions_recorded_total {}",
            decisions.recorded.load(std::sync::atomic::Ordering::Relaxed)
        )],
    );
    push(
        "halo_decisions_repeats_total",
        "counter",
        "Policy decisions recorded as a repeat of the unchanged decision before them.",
        vec![format!("halo_decisions_repeats_total {}", decisions.repeats.load(std::sync::atomic::Ordering::Relaxed))],
    );
    push(
        "halo_decisions_dropped_total",
        "counter",
        "Policy decisions neither recorded nor shadowed because the recorder was behind.",
        vec![format!("halo_decisions_dropped_total {}", decisions.dropped.load(std::sync::atomic::Ordering::Relaxed))],
    );
    push(
        "halo_decisions_write_failures_total",
        "counter",
        "Decision records that could not be written (disk full, directory gone).",
        vec![format!(
            "halo_decisions_write_failures_total {}",
            decisions.write_failures.load(std::sync::atomic::Ordering::Relaxed)
        )],
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The OpenAPI document lists exactly the routes the router serves.
    #[test]
    fn the_openapi_document_matches_the_routes() {
        let doc: Value = serde_json::from_str(OPENAPI).expect("docs/openapi.json is JSON");
        let documented: std::collections::BTreeSet<String> =
            doc["paths"].as_object().expect("paths").keys().cloned().collect();
        let source = include_str!("api.rs");
        let served: std::collections::BTreeSet<String> = source
            .match_indices(".route(\"")
            .filter_map(|(i, m)| source[i + m.len()..].split('"').next().map(String::from))
            .collect();
        assert!(documented.len() >= 18, "{documented:?}");
        assert_eq!(documented, served);
    }

    #[test]
    fn bodies_are_parsed_strictly_and_say_what_is_wrong() {
        let bad = body::<MigrateBody>(&Bytes::from_static(b"{\"hots\": \"h\"}")).err().expect("refused");
        assert_eq!(bad.0, StatusCode::BAD_REQUEST);
        assert!(bad.1["error"].as_str().is_some_and(|e| e.contains("unknown field `hots`")), "{}", bad.1);
        let bad = body::<HaBody>(&Bytes::from_static(b"{\"enabled\": 1}")).err().expect("refused");
        assert!(bad.1["error"].as_str().is_some_and(|e| e.contains("expected a boolean")), "{}", bad.1);
        assert!(body::<MigrateBody>(&Bytes::from_static(b"not json")).is_err());
        assert!(body::<EmptyBody>(&Bytes::from_static(b"  ")).is_ok(), "an empty body is {{}}");
        assert_eq!(
            body::<MaintenanceBody>(&Bytes::from_static(b"{\"enter\": true}")).map(|b| b.enter).ok(),
            Some(true)
        );
    }

    const ADMIN: &str = "admin-token-0123456789";
    const READER: &str = "reader-token-0123456789";

    /// The API of a node that is not master (no agent loop behind it: `control` receives what
    /// the API asks), served on loopback.
    async fn served(
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> (std::net::SocketAddr, tokio::sync::mpsc::Receiver<crate::handle::Control>) {
        let text = "cluster = \"c\"\nhost = \"host-1\"\nkey-file = \"/nonexistent\"\nnetworks = [\"A\"]\n\
                    [[hosts]]\nname = \"host-1\"\nmemory-mib = 4096\nvcpus = 4\naddresses = { A = \"10.0.0.1\" }\nlibvirt-uri = \"qemu+tcp://10.0.0.1/system\"\n\
                    [[hosts]]\nname = \"host-2\"\nmemory-mib = 4096\nvcpus = 4\naddresses = { A = \"10.0.0.2\" }\nlibvirt-uri = \"qemu+tcp://10.0.0.2/system\"\n\
                    [[datastores]]\nname = \"ds1\"\ndirectory = \"/srv/ds1\"\n";
        let config = AgentConfig::parse(text, "halo.toml").expect("valid");
        let (agent, rx) = crate::handle::detached("host-1", config.cluster(), 64);
        let api = Arc::new(Api {
            agent,
            config: Arc::new(config),
            token: ADMIN.into(),
            read_token: Some(READER.into()),
            peers: BTreeMap::new(),
            failures: AuthFailures::default(),
            tls_client: None,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let address = listener.local_addr().expect("address");
        match tls {
            Some(tls) => drop(tokio::spawn(serve_tls(listener, router(api), tls))),
            None => {
                let app = router(api).into_make_service_with_connect_info::<std::net::SocketAddr>();
                tokio::spawn(async move { axum::serve(listener, app).await });
            }
        }
        (address, rx)
    }

    /// Every route of the OpenAPI document, with its path's parameters filled in.
    fn every_route() -> Vec<(String, String)> {
        let doc: Value = serde_json::from_str(OPENAPI).expect("docs/openapi.json is JSON");
        let mut routes = Vec::new();
        for (path, methods) in doc["paths"].as_object().expect("paths") {
            for method in methods.as_object().expect("methods").keys() {
                let path = path.replace("{vm}", "vm-1").replace("{host}", "host-2");
                routes.push((method.to_uppercase(), path));
            }
        }
        routes
    }

    /// Roles: the read-only token reads everything and acts on nothing (403, before the agent
    /// hears of it); no token or a wrong one gets a 401, later the more a client fails; an
    /// action with the admin token is recorded with its role and its answer.
    #[test]
    fn a_read_only_token_reads_everything_and_acts_on_nothing_and_actions_are_audited() {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
        runtime.block_on(async {
            let (address, mut control) = served(None).await;
            let address = address.to_string();
            let call = |method: String, path: String, token: Option<&'static str>| {
                let address = address.clone();
                async move {
                    let body = (method == "POST").then(|| b"{}".to_vec());
                    crate::client::request(&address, None, &method, &path, token, body, &[], Duration::from_secs(20))
                        .await
                        .expect("an answer")
                }
            };
            let routes = every_route();
            let (mut reads, mut actions) = (0, 0);
            for (method, path) in &routes {
                let answer = call(method.clone(), path.clone(), Some(READER)).await;
                if is_action(&Method::from_bytes(method.as_bytes()).expect("method"), path) {
                    actions += 1;
                    assert_eq!(answer.status, 403, "{method} {path} with the read-only token");
                    let text = String::from_utf8_lossy(&answer.body);
                    assert!(text.contains("this token is read-only"), "{text}");
                } else {
                    reads += 1;
                    assert!(
                        ![401, 403].contains(&answer.status),
                        "{method} {path}: {} with the read-only token",
                        answer.status
                    );
                }
            }
            assert!(actions >= 12 && reads >= 8, "{actions} actions, {reads} reads");
            while let Ok(asked) = control.try_recv() {
                assert!(!matches!(asked, crate::handle::Control::Audit(_)), "reads and refusals are not audited");
            }

            // An action with the admin token: answered (here: no master to ask yet) and audited.
            let answer = call("POST".into(), "/api/v1/vms/vm-1/migrate".into(), Some(ADMIN)).await;
            assert_eq!(answer.status, 503, "{}", String::from_utf8_lossy(&answer.body));
            let audited = loop {
                match tokio::time::timeout(Duration::from_secs(5), control.recv()).await {
                    Ok(Some(crate::handle::Control::Audit(event))) => break event,
                    Ok(Some(_)) => continue,
                    other => panic!("no audit record: {}", other.is_ok()),
                }
            };
            assert_eq!(audited.kind, EventKind::ApiAction);
            assert_eq!(audited.message, "admin token: POST /api/v1/vms/vm-1/migrate from 127.0.0.1: 503");

            // Wrong and missing tokens: 401, each later than the one before (250 ms, 500 ms, …).
            let mut took = Vec::new();
            for token in [Some("wrong-token-0123456789"), None, Some("wrong-token-0123456789")] {
                let began = std::time::Instant::now();
                let answer = call("GET".into(), "/api/v1/status".into(), token).await;
                assert_eq!(answer.status, 401);
                took.push(began.elapsed());
            }
            assert!(took[0] >= Duration::from_millis(250) && took[1] >= Duration::from_millis(500), "{took:?}");
            assert!(took[2] >= Duration::from_secs(1), "{took:?}");
            let metrics = call("GET".into(), "/metrics".into(), Some(READER)).await;
            let text = String::from_utf8_lossy(&metrics.body);
            assert!(text.contains("halo_api_auth_failures_total 3"), "{text}");
            // The client authenticated again: its delay starts afresh.
            let began = std::time::Instant::now();
            assert_eq!(call("GET".into(), "/api/v1/status".into(), Some("wrong-token-0123456789")).await.status, 401);
            assert!(began.elapsed() < Duration::from_millis(500), "{:?}", began.elapsed());
        });
    }

    /// TLS: a client trusting the agent's certificate gets answers; one trusting another
    /// certificate, one speaking plain HTTP to it, and a TLS client of a plain server get none.
    #[test]
    fn tls_answers_only_a_client_that_trusts_the_agents_certificate() {
        let dir = tempfile::tempdir().expect("dir");
        let write = |name: &str, pem: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).expect("write");
            path
        };
        let (cert, key) = crate::tls::make_cert(&["127.0.0.1".into()]).expect("pair");
        let (cert, key) = (write("api.crt", cert), write("api.key", key));
        let (other, _) = crate::tls::make_cert(&["127.0.0.1".into()]).expect("another");
        let other = write("other.crt", other);
        let (wrong_name, _) = crate::tls::make_cert(&["10.9.9.9".into()]).expect("another name");
        let wrong_name = write("wrong-name.crt", wrong_name);
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
        runtime.block_on(async {
            let server = crate::tls::server_config(&cert, &key).expect("server");
            let (address, _control) = served(Some(server)).await;
            let (plain, _plain_control) = served(None).await;
            let (address, plain) = (address.to_string(), plain.to_string());
            let get = |address: String, tls: Option<crate::tls::TlsClient>, token: &'static str| async move {
                crate::client::request(
                    &address,
                    tls.as_ref(),
                    "GET",
                    "/metrics",
                    Some(token),
                    None,
                    &[],
                    Duration::from_secs(5),
                )
                .await
            };
            let trusting = crate::tls::TlsClient::trusting(&cert).expect("client");
            let answer = get(address.clone(), Some(trusting.clone()), READER).await.expect("answered over TLS");
            assert_eq!(answer.status, 200);
            assert!(String::from_utf8_lossy(&answer.body).contains("halo_up 1"));
            assert_eq!(
                get(address.clone(), Some(trusting.clone()), "wrong-token-0123456789").await.expect("answer").status,
                401
            );

            let stranger = crate::tls::TlsClient::trusting(&other).expect("client");
            let refused = get(address.clone(), Some(stranger), READER).await.expect_err("another certificate: refused");
            assert!(refused.to_string().contains("TLS") && refused.to_string().contains("certificate"), "{refused}");
            // Trusted, but not made out for this address.
            let (wrong, _) = (crate::tls::TlsClient::trusting(&wrong_name).expect("client"), ());
            let refused = get(address.clone(), Some(wrong), READER).await.expect_err("wrong name: refused");
            assert!(refused.to_string().contains("TLS"), "{refused}");
            let plain_to_tls = get(address.clone(), None, READER).await;
            assert!(plain_to_tls.is_err(), "plain HTTP to the TLS port answered: {:?}", plain_to_tls.map(|r| r.status));
            let tls_to_plain = get(plain, Some(trusting), READER).await.expect_err("a plain server: no TLS");
            assert!(tls_to_plain.to_string().contains("TLS"), "{tls_to_plain}");
        });
    }

    #[test]
    fn tokens_compare_in_constant_time_and_exactly() {
        assert!(constant_time_eq(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!constant_time_eq(b"0123456789abcdef", b"0123456789abcdeF"));
        assert!(!constant_time_eq(b"0123456789abcdef", b"0123456789abcde"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}

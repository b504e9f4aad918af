//! `kvlens serve`: kvlens's engine behind the OpenAI API (`/v1/chat/completions`,
//! `/v1/completions`, streaming included), so that other harnesses can use kvlens's methods
//! and load generators can measure them.
//!
//! Requests from every connection go to one scheduler ([`kvlens_engine::sched`]): continuous
//! batching under a KV memory budget, so concurrent requests decode in the same steps, and
//! each gets the tokens it would get alone. One server may serve several methods over the
//! same weights: with one, the served name selects it; with several, `NAME/METHOD` (the
//! method's name, or its canonical spec) selects one and the plain name means the first.
//!
//! The HTTP side is axum on hyper and tokio: keep-alive, chunked request bodies, server-sent
//! events, a body limit, a header-read timeout (idle and slow clients are closed, so they
//! cannot hold the connection limit), and a graceful stop on SIGTERM or Ctrl-C in which the
//! requests in flight finish. The bodies are [`kvlens_wire`]'s types, which the `openai`
//! backend reads.

mod answer;
mod ask;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use kvlens_engine::sched::{self, Event, Limits, Scheduler};
use kvlens_engine::{EngineError, Model};
use kvlens_press::{KvDtype, Spec};
use kvlens_wire::{ErrorBody, ErrorDetail, ModelEntry, ModelList};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc as amsc, oneshot, Semaphore};

/// The largest request body accepted (a prompt of the longest contexts fits many times).
const BODY_LIMIT: usize = 16 << 20;

pub struct ServeOptions {
    /// `host:port`; port 0 picks a free one.
    pub addr: String,
    /// The methods served, the first being the default; at least one.
    pub methods: Vec<Spec>,
    pub kv_dtype: KvDtype,
    /// The model id the API lists and answers with (default: the model's name).
    pub served_name: Option<String>,
    /// When set, requests must carry `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
    /// Connections held at once (more are answered 503).
    pub max_connections: usize,
    /// How long a connection may take to send a request's headers, the first or the next
    /// one on a kept-alive connection; then it is closed.
    pub header_timeout: Duration,
    /// On SIGTERM, how long the requests in flight may take to finish.
    pub drain_timeout: Duration,
    /// The scheduler's KV budget, batch size and prompt tokens per step.
    pub limits: Limits,
}

/// One served method: the ids that select it.
#[derive(Debug, Clone)]
pub struct Served {
    /// The id `GET /v1/models` lists and answers carry.
    pub id: String,
    pub spec: Spec,
    /// Every `model` value that selects it.
    names: Vec<String>,
}

/// The ids of `methods` under `name`: the plain name for a single method; `NAME/METHOD` for
/// several, METHOD being the method's name where no other served method has it, else its
/// canonical spec (both are accepted, and so is any spec that parses to the canonical one,
/// such as `NAME/snapkv:budget=256` for its defaults spelled out).
pub fn served_ids(name: &str, methods: &[Spec]) -> Vec<Served> {
    let single = methods.len() == 1;
    methods
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let unique = methods.iter().filter(|m| m.name == spec.name).count() == 1;
            let label = if unique {
                spec.name.clone()
            } else {
                spec.canonical()
            };
            let mut names = vec![
                format!("{name}/{label}"),
                format!("{name}/{}", spec.canonical()),
            ];
            if i == 0 {
                names.push(name.to_string());
            }
            names.dedup();
            Served {
                id: if single {
                    name.to_string()
                } else {
                    format!("{name}/{label}")
                },
                spec: spec.clone(),
                names,
            }
        })
        .collect()
}

/// A request for the scheduler's thread, with where its events go.
struct Job {
    req: sched::Request<'static>,
    events: amsc::UnboundedSender<Event>,
}

struct App {
    model: Arc<Model>,
    /// The served name, before any `/METHOD`.
    name: String,
    served: Vec<Served>,
    dtype: KvDtype,
    jobs: std::sync::Mutex<mpsc::Sender<Job>>,
    api_key: Option<String>,
    ids: AtomicU64,
    in_flight: AtomicUsize,
    /// The most completion requests in flight at once since the server started.
    max_in_flight: AtomicUsize,
}

impl App {
    /// The method a request's `model` selects: an empty name means the first.
    fn select(&self, model: &str) -> Result<&Served, ApiError> {
        if model.is_empty() {
            return Ok(&self.served[0]);
        }
        let spec = model
            .strip_prefix(self.name.as_str())
            .and_then(|m| m.strip_prefix('/'))
            .and_then(|m| Spec::parse(m).ok())
            .map(|s| s.canonical());
        self.served
            .iter()
            .find(|s| s.names.iter().any(|n| n == model))
            .or_else(|| {
                let c = spec?;
                self.served.iter().find(|s| s.spec.canonical() == c)
            })
            .ok_or_else(|| {
                let ids: Vec<&str> = self.served.iter().map(|s| s.id.as_str()).collect();
                ApiError(
                    404,
                    format!(
                        "the model `{model}` is not served here; this server serves {}",
                        ids.join(", ")
                    ),
                )
            })
    }

    fn submit(&self, job: Job) -> Result<(), ApiError> {
        let jobs = self
            .jobs
            .lock()
            .map_err(|_| ApiError(503, "the scheduler is not running".into()))?;
        jobs.send(job)
            .map_err(|_| ApiError(503, "the scheduler is not running".into()))
    }
}

/// An error answered to the client: status and message, as OpenAI's error body.
#[derive(Debug)]
pub(crate) struct ApiError(pub u16, pub String);

pub(crate) fn invalid(msg: impl Into<String>) -> ApiError {
    ApiError(400, msg.into())
}

fn error_body(status: u16, msg: &str) -> ErrorBody {
    ErrorBody {
        error: ErrorDetail {
            message: msg.to_string(),
            kind: if status >= 500 {
                "server_error"
            } else {
                "invalid_request_error"
            }
            .into(),
            code: Some(status.into()),
        },
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(error_body(self.0, &self.1))).into_response()
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let status = if matches!(e, EngineError::Invalid(_) | EngineError::TooLong { .. }) {
            400
        } else {
            500
        };
        ApiError(status, e.to_string())
    }
}

/// A server bound to its address, not yet serving.
pub struct Server {
    listener: std::net::TcpListener,
    app: Arc<App>,
    max_connections: usize,
    header_timeout: Duration,
    drain_timeout: Duration,
}

/// A server running on its own thread (tests, embedding); dropped, it stops as on SIGTERM.
pub struct Handle {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Handle {
    /// The API root, `http://ADDR/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Server {
    pub fn bind(model: Model, opts: ServeOptions) -> std::io::Result<Self> {
        let bad = |msg: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, msg);
        if opts.methods.is_empty() {
            return Err(bad("no method to serve".into()));
        }
        let name = opts.served_name.unwrap_or_else(|| model.name.clone());
        let served = served_ids(&name, &opts.methods);
        let model = Arc::new(model);
        // Checked here so that the scheduler's thread starts with valid limits.
        Scheduler::new(&model, opts.limits).map_err(|e| bad(e.to_string()))?;
        let listener = std::net::TcpListener::bind(&opts.addr)?;
        listener.set_nonblocking(true)?;
        let (jobs, inbox) = mpsc::channel();
        let for_thread = model.clone();
        let limits = opts.limits;
        std::thread::Builder::new()
            .name("kvlens-scheduler".into())
            .spawn(move || schedule(&for_thread, limits, inbox))?;
        Ok(Self {
            listener,
            app: Arc::new(App {
                model,
                name,
                served,
                dtype: opts.kv_dtype,
                jobs: std::sync::Mutex::new(jobs),
                api_key: opts.api_key,
                ids: AtomicU64::new(0),
                in_flight: AtomicUsize::new(0),
                max_in_flight: AtomicUsize::new(0),
            }),
            max_connections: opts.max_connections.max(1),
            header_timeout: opts.header_timeout,
            drain_timeout: opts.drain_timeout,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The methods served, with their ids.
    pub fn served(&self) -> &[Served] {
        &self.app.served
    }

    /// Serves until SIGTERM or Ctrl-C, then lets the requests in flight finish.
    pub fn run(self) -> std::io::Result<()> {
        let rt = runtime()?;
        rt.block_on(async move {
            let stop = async {
                let term = async {
                    #[cfg(unix)]
                    {
                        use tokio::signal::unix::{signal, SignalKind};
                        match signal(SignalKind::terminate()) {
                            Ok(mut s) => {
                                s.recv().await;
                            }
                            Err(_) => std::future::pending::<()>().await,
                        }
                    }
                    #[cfg(not(unix))]
                    std::future::pending::<()>().await
                };
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {},
                    _ = term => {},
                }
            };
            self.serve(stop, true).await
        })
    }

    /// Serves from a background thread until the handle is dropped.
    pub fn spawn(self) -> std::io::Result<Handle> {
        let addr = self.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let rt = runtime()?;
        let thread = std::thread::Builder::new()
            .name("kvlens-serve".into())
            .spawn(move || {
                let _ = rt.block_on(self.serve(
                    async {
                        let _ = stopped.await;
                    },
                    false,
                ));
            })?;
        Ok(Handle {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    async fn serve(self, stop: impl Future<Output = ()>, say: bool) -> std::io::Result<()> {
        let listener = tokio::net::TcpListener::from_std(self.listener)?;
        let app = self.app.clone();
        let router = router(self.app);
        let permits = Arc::new(Semaphore::new(self.max_connections));
        let graceful = GracefulShutdown::new();
        let mut stop = std::pin::pin!(stop);
        loop {
            let stream = tokio::select! {
                r = listener.accept() => match r {
                    Ok((s, _)) => s,
                    Err(e) => {
                        // Out of file descriptors and the like: wait, then go on.
                        tracing::warn!("accepting a connection: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = &mut stop => break,
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                tokio::spawn(refuse(stream));
                continue;
            };
            let _ = stream.set_nodelay(true);
            let mut b = hyper::server::conn::http1::Builder::new();
            b.timer(TokioTimer::new())
                .header_read_timeout(self.header_timeout)
                .keep_alive(true);
            let conn = b.serve_connection(
                TokioIo::new(stream),
                TowerToHyperService::new(router.clone()),
            );
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                let _ = conn.await;
                drop(permit);
            });
        }
        drop(listener);
        let n = app.in_flight.load(Ordering::SeqCst);
        if say {
            eprintln!("kvlens: stopping; {n} request(s) in flight finish first");
        }
        if tokio::time::timeout(self.drain_timeout, graceful.shutdown())
            .await
            .is_err()
            && say
        {
            eprintln!(
                "kvlens: requests still in flight after {} s; stopping anyway",
                self.drain_timeout.as_secs_f64()
            );
        }
        Ok(())
    }
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    // The engine computes on its own threads; these only move bytes.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("kvlens-http")
        .enable_all()
        .build()
}

/// Over the connection limit: a short 503 and close. What the client sent first is read
/// (briefly), so that closing does not reset the connection before it reads the answer.
async fn refuse(mut stream: tokio::net::TcpStream) {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await;
    let body = serde_json::to_string(&error_body(503, "too many connections; try again"))
        .unwrap_or_default();
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body.as_bytes()).await;
    let _ = stream.shutdown().await;
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .fallback(
            |req: Request| async move { ApiError(404, format!("no route {}", req.uri().path())) },
        )
        .method_not_allowed_fallback(|req: Request| async move {
            ApiError(405, format!("{} is not allowed here", req.method()))
        })
        .layer(middleware::from_fn_with_state(app.clone(), authorize))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(app)
}

async fn authorize(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    if let Some(key) = &app.api_key {
        let given = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(key.as_str()) {
            return ApiError(401, "missing or wrong API key".into()).into_response();
        }
    }
    next.run(req).await
}

/// `status`, and the completion requests in flight now and at most so far (what a load
/// test checks its concurrency limit against, counted here on the server's side).
async fn health(State(app): State<Arc<App>>) -> Response {
    Json(serde_json::json!({
        "status": "ok",
        "requests_in_flight": app.in_flight.load(Ordering::SeqCst),
        "max_requests_in_flight": app.max_in_flight.load(Ordering::SeqCst),
    }))
    .into_response()
}

async fn models(State(app): State<Arc<App>>) -> Response {
    let context = app.model.config().context as u64;
    Json(ModelList {
        object: "list".into(),
        data: app
            .served
            .iter()
            .map(|s| ModelEntry {
                id: s.id.clone(),
                object: "model".into(),
                owned_by: "kvlens".into(),
                kvlens_method: Some(s.spec.canonical()),
                max_model_len: Some(context),
            })
            .collect(),
    })
    .into_response()
}

async fn chat(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    answer::complete(app, headers, body, true).await
}

async fn completions(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    answer::complete(app, headers, body, false).await
}

/// The scheduler's thread: takes jobs as they come, runs engine steps while any request
/// waits or runs, and sends each request's events to its handler. A handler that stopped
/// listening (its client went away) has its request cancelled. Ends when the server is gone.
fn schedule(model: &Model, limits: Limits, inbox: mpsc::Receiver<Job>) {
    type Clients = HashMap<u64, amsc::UnboundedSender<Event>>;
    let Ok(mut sched) = Scheduler::new(model, limits) else {
        return;
    };
    let mut clients: Clients = HashMap::new();
    let take = |sched: &mut Scheduler, clients: &mut Clients, job: Job| {
        clients.insert(job.req.id, job.events);
        sched.submit(job.req);
    };
    loop {
        if sched.is_idle() {
            match inbox.recv() {
                Ok(job) => take(&mut sched, &mut clients, job),
                Err(_) => return,
            }
        }
        while let Ok(job) = inbox.try_recv() {
            take(&mut sched, &mut clients, job);
        }
        let mut gone = Vec::new();
        let stepped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            sched.step(&mut |e| {
                let (id, done) = match &e {
                    Event::Token { id, .. } => (*id, false),
                    Event::Done { id, .. } => (*id, true),
                };
                if let Some(tx) = clients.get(&id) {
                    if tx.send(e).is_err() {
                        gone.push(id);
                    }
                }
                if done {
                    clients.remove(&id);
                }
            })
        }));
        if stepped.is_err() {
            // The engine panicked: every request in flight fails, and a fresh scheduler
            // takes the next ones.
            for (id, tx) in clients.drain() {
                let _ = tx.send(Event::Done {
                    id,
                    result: Err(EngineError::Invalid("the engine panicked".into())),
                });
            }
            match Scheduler::new(model, limits) {
                Ok(s) => sched = s,
                Err(_) => return,
            }
            continue;
        }
        for id in gone {
            sched.cancel(id);
            clients.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_methods_get_name_slash_method_ids() {
        let m = |s: &str| Spec::parse(s).unwrap();
        let one = served_ids("default", &[m("snapkv:budget=256")]);
        assert_eq!(one[0].id, "default");
        assert!(one[0].names.contains(&"default/snapkv".to_string()));
        let many = served_ids(
            "default",
            &[m("full"), m("snapkv:budget=256"), m("snapkv:budget=128")],
        );
        let ids: Vec<&str> = many.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "default/full",
                "default/snapkv:budget=256,kernel=7,pool=max,when=prefill,window=32",
                "default/snapkv:budget=128,kernel=7,pool=max,when=prefill,window=32"
            ]
        );
        // The plain name means the first; an ambiguous method name selects none.
        assert!(many[0].names.contains(&"default".to_string()));
        assert!(!many[1].names.contains(&"default".to_string()));
        assert!(!many
            .iter()
            .any(|s| s.names.contains(&"default/snapkv".into())));
    }
}

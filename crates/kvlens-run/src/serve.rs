//! `kvlens serve`: kvlens's engine, with one compression method, behind the OpenAI API
//! (`/v1/chat/completions`, `/v1/completions`, streaming included), so that other harnesses
//! can use kvlens's methods and the `openai` backend can be tested against a real server.
//!
//! Requests run together on the engine's scheduler ([`kvlens_engine::sched`]): continuous
//! batching under a KV memory budget, so concurrent requests decode in the same steps, and
//! each gets the tokens it would get alone. Besides the standard fields, the last event
//! carries llama.cpp-style `timings` and a `kvlens` object with the engine's own measurements
//! (queue time, prefill time, cache bytes, preemptions).

use crate::http::{self, Request};
use kvlens_engine::sched::{self, Event, Limits, Scheduler};
use kvlens_engine::{EngineError, FinishReason, GenOptions, Message, Model, Sampling};
use kvlens_press::{KvDtype, Spec};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub struct ServeOptions {
    /// `host:port`; port 0 picks a free one.
    pub addr: String,
    pub method: Spec,
    pub kv_dtype: KvDtype,
    /// The model id the API lists and answers with (default: the model as given).
    pub served_name: Option<String>,
    /// When set, requests must carry `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
    /// Connections served at once (the rest are answered 503).
    pub max_connections: usize,
    /// The scheduler's KV budget, batch size and prompt tokens per step.
    pub limits: Limits,
}

/// A request for the scheduler's thread, with where its events go.
struct Job {
    req: sched::Request<'static>,
    events: mpsc::Sender<Event>,
}

struct State {
    model: Arc<Model>,
    name: String,
    method: Spec,
    dtype: KvDtype,
    jobs: mpsc::Sender<Job>,
    api_key: Option<String>,
    open: AtomicUsize,
    max_open: usize,
    ids: AtomicUsize,
}

pub struct Server {
    listener: TcpListener,
    state: Arc<State>,
    stop: Arc<AtomicBool>,
}

/// A server running on its own thread; dropped, it stops accepting.
pub struct Handle {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
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
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Server {
    pub fn bind(model: Model, opts: ServeOptions) -> std::io::Result<Self> {
        let listener = TcpListener::bind(&opts.addr)?;
        let name = opts.served_name.unwrap_or_else(|| model.name.clone());
        let model = Arc::new(model);
        // Checked here so that the scheduler's thread starts with valid limits.
        Scheduler::new(&model, opts.limits)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        let (jobs, inbox) = mpsc::channel();
        let for_thread = model.clone();
        std::thread::spawn(move || schedule(&for_thread, opts.limits, inbox));
        Ok(Self {
            listener,
            state: Arc::new(State {
                model,
                name,
                method: opts.method,
                dtype: opts.kv_dtype,
                jobs,
                api_key: opts.api_key,
                open: AtomicUsize::new(0),
                max_open: opts.max_connections.max(1),
                ids: AtomicUsize::new(0),
            }),
            stop: Arc::new(AtomicBool::new(false)),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until the process ends.
    pub fn run(self) {
        for conn in self.listener.incoming() {
            if self.stop.load(Ordering::SeqCst) {
                break;
            }
            let Ok(mut stream) = conn else { continue };
            let state = self.state.clone();
            if state.open.fetch_add(1, Ordering::SeqCst) >= state.max_open {
                state.open.fetch_sub(1, Ordering::SeqCst);
                http::respond_error(&mut stream, 503, "too many connections; try again");
                continue;
            }
            std::thread::spawn(move || {
                handle(&state, stream);
                state.open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    }

    /// Serves from a background thread.
    pub fn spawn(self) -> std::io::Result<Handle> {
        let addr = self.local_addr()?;
        let stop = self.stop.clone();
        let thread = std::thread::spawn(move || self.run());
        Ok(Handle {
            addr,
            stop,
            thread: Some(thread),
        })
    }
}

/// An error answered to the client: status and message.
struct ApiError(u16, String);

fn invalid(msg: impl Into<String>) -> ApiError {
    ApiError(400, msg.into())
}

fn handle(state: &State, mut stream: TcpStream) {
    let req = match http::read_request(&mut stream, Duration::from_secs(60)) {
        Ok(r) => r,
        Err(e) => {
            if e.status > 0 {
                http::respond_error(&mut stream, e.status, &e.msg);
            }
            return;
        }
    };
    if let Some(key) = &state.api_key {
        let given = req
            .header("authorization")
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(key.as_str()) {
            http::respond_error(&mut stream, 401, "missing or wrong API key");
            return;
        }
    }
    let result = match (req.method.as_str(), req.path.trim_end_matches('/')) {
        ("GET", "/health" | "/v1/health") => {
            http::respond(&mut stream, 200, "application/json", b"{\"status\":\"ok\"}");
            Ok(())
        }
        ("GET", "/v1/models") => {
            let body = json!({"object": "list", "data": [{
                "id": state.name, "object": "model", "owned_by": "kvlens",
                "kvlens_method": state.method.canonical(),
                "max_model_len": state.model.config().context,
            }]});
            http::respond(
                &mut stream,
                200,
                "application/json",
                body.to_string().as_bytes(),
            );
            Ok(())
        }
        ("POST", "/v1/chat/completions") => complete(state, &req, true, &mut stream),
        ("POST", "/v1/completions") => complete(state, &req, false, &mut stream),
        (_, "/v1/chat/completions" | "/v1/completions" | "/v1/models" | "/health") => {
            Err(ApiError(405, format!("{} is not allowed here", req.method)))
        }
        _ => Err(ApiError(404, format!("no route {}", req.path))),
    };
    if let Err(ApiError(status, msg)) = result {
        http::respond_error(&mut stream, status, &msg);
    }
}

/// What a request asks for, checked.
struct Ask {
    ids: Vec<u32>,
    opts: GenOptions,
    stream: bool,
    usage_in_stream: bool,
}

fn parse(state: &State, body: &[u8], chat: bool) -> Result<Ask, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| invalid(format!("the body is not valid JSON: {e}")))?;
    let o = v
        .as_object()
        .ok_or_else(|| invalid("the body must be a JSON object"))?;
    let num = |k: &str| -> Result<Option<f64>, ApiError> {
        match o.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(x) => x
                .as_f64()
                .map(Some)
                .ok_or_else(|| invalid(format!("`{k}` must be a number"))),
        }
    };
    if let Some(n) = num("n")? {
        if n != 1.0 {
            return Err(invalid("only n = 1 is supported"));
        }
    }
    for k in ["logprobs", "top_logprobs", "echo", "best_of", "tools"] {
        if o.get(k)
            .is_some_and(|x| !x.is_null() && x != &Value::Bool(false))
        {
            return Err(invalid(format!("`{k}` is not supported by kvlens serve")));
        }
    }
    let model = &state.model;
    let ids = if chat {
        let msgs = o
            .get("messages")
            .and_then(Value::as_array)
            .ok_or_else(|| invalid("`messages` must be an array"))?;
        let mut messages = Vec::new();
        for (i, m) in msgs.iter().enumerate() {
            let role = m
                .get("role")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid(format!("messages[{i}].role must be a string")))?;
            let content = match m.get("content") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => {
                    let mut s = String::new();
                    for p in parts {
                        match (p.get("type").and_then(Value::as_str), p.get("text")) {
                            (Some("text"), Some(Value::String(t))) => s.push_str(t),
                            _ => {
                                return Err(invalid(format!(
                                    "messages[{i}].content: only text parts are supported"
                                )))
                            }
                        }
                    }
                    s
                }
                _ => {
                    return Err(invalid(format!(
                        "messages[{i}].content must be a string or a list of text parts"
                    )))
                }
            };
            messages.push(Message {
                role: role.to_string(),
                content,
            });
        }
        if messages.is_empty() {
            return Err(invalid("`messages` is empty"));
        }
        let t = model
            .template
            .as_ref()
            .ok_or_else(|| invalid("this model has no chat template; use /v1/completions"))?;
        t.encode(&model.tokenizer, &messages)
            .map_err(|e| invalid(e.to_string()))?
    } else {
        let prompt = match o.get("prompt") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
                a[0].as_str().unwrap_or_default().to_string()
            }
            _ => return Err(invalid("`prompt` must be a string")),
        };
        model
            .encode_prompt(&prompt, false)
            .map_err(|e| invalid(e.to_string()))?
    };
    if ids.is_empty() {
        return Err(invalid("the prompt is empty"));
    }
    let context = model.config().context;
    let room = context.saturating_sub(ids.len());
    let max_tokens = match num("max_completion_tokens")?.or(num("max_tokens")?) {
        Some(m) if m >= 1.0 && m.fract() == 0.0 => m as usize,
        Some(_) => return Err(invalid("`max_tokens` must be a positive integer")),
        // OpenAI's defaults: 16 for completions, the rest of the context for chat.
        None if chat => room,
        None => 16.min(room),
    };
    if max_tokens == 0 || ids.len() + max_tokens > context {
        return Err(invalid(format!(
            "the prompt has {} tokens and asks for {max_tokens} more; the model's context is \
             {context} tokens",
            ids.len()
        )));
    }
    let stop = match o.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| x.as_str().map(String::from))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| invalid("`stop` must be a string or a list of strings"))?,
        Some(_) => return Err(invalid("`stop` must be a string or a list of strings")),
    };
    let temperature = num("temperature")?.unwrap_or(1.0);
    let top_p = num("top_p")?.unwrap_or(1.0);
    let top_k = num("top_k")?.unwrap_or(0.0);
    if !(0.0..=100.0).contains(&temperature) || !(0.0..=1.0).contains(&top_p) {
        return Err(invalid("temperature must be >= 0 and top_p within [0, 1]"));
    }
    let seed = match o.get("seed") {
        None | Some(Value::Null) => 0,
        Some(x) => x
            .as_u64()
            .or_else(|| x.as_i64().map(|i| i as u64))
            .ok_or_else(|| invalid("`seed` must be an integer"))?,
    };
    let stream = o.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let usage_in_stream = v
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok(Ask {
        ids,
        opts: GenOptions {
            max_new_tokens: max_tokens,
            sampling: Sampling {
                temperature: temperature as f32,
                top_k: if top_k > 0.0 { top_k as usize } else { 0 },
                top_p: top_p as f32,
                seed,
            },
            stop,
            ..GenOptions::default()
        },
        stream,
        usage_in_stream,
    })
}

/// How much of the text so far can be sent: not a trailing incomplete character, and not a
/// tail that may still grow into a stop string (the answer is cut before one).
fn safe_len(text: &str, stop: &[String]) -> usize {
    let mut end = text.len();
    while text[..end].ends_with('\u{FFFD}') {
        end -= '\u{FFFD}'.len_utf8();
    }
    let mut hold = 0;
    for s in stop {
        for (k, _) in s.char_indices().skip(1) {
            if text[..end].ends_with(&s[..k]) {
                hold = hold.max(k);
            }
        }
    }
    end - hold
}

fn complete(
    state: &State,
    req: &Request,
    chat: bool,
    stream: &mut TcpStream,
) -> Result<(), ApiError> {
    let ask = parse(state, &req.body, chat)?;
    let id = format!(
        "{}-{}",
        if chat { "chatcmpl" } else { "cmpl" },
        state.ids.fetch_add(1, Ordering::SeqCst)
    );
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let object = match (chat, ask.stream) {
        (true, true) => "chat.completion.chunk",
        (true, false) => "chat.completion",
        (false, _) => "text_completion",
    };
    let chunk = |content: Option<&str>, finish: Option<Value>| -> Value {
        let mut choice = if chat {
            let mut d = Map::new();
            if let Some(c) = content {
                d.insert("content".into(), json!(c));
            }
            json!({"index": 0, "delta": d, "finish_reason": null})
        } else {
            json!({"index": 0, "text": content.unwrap_or(""), "finish_reason": null})
        };
        if let Some(Value::Object(f)) = finish {
            for (k, v) in f {
                choice[k] = v;
            }
        }
        json!({"id": id, "object": object, "created": created, "model": state.name,
               "choices": [choice]})
    };

    let (events, inbox) = mpsc::channel();
    let job = Job {
        req: sched::Request {
            id: state.ids.fetch_add(1, Ordering::SeqCst) as u64,
            prompt: ask.ids.clone(),
            cache: sched::CacheSource::New(state.method.clone(), state.dtype),
            opts: ask.opts.clone(),
        },
        events,
    };
    if state.jobs.send(job).is_err() {
        return Err(ApiError(503, "the scheduler is not running".into()));
    }
    let mut gone = false;
    if ask.stream {
        if http::start_events(stream).is_err() {
            return Ok(());
        }
        if chat {
            let mut first = chunk(None, None);
            first["choices"][0]["delta"] = json!({"role": "assistant", "content": ""});
            gone = http::send_event(stream, &first.to_string()).is_err();
        }
    }
    let model = &state.model;
    let mut sent = 0;
    let mut tokens = Vec::new();
    let result = loop {
        match inbox.recv() {
            Ok(Event::Token { token, .. }) => {
                tokens.push(token);
                if !ask.stream {
                    continue;
                }
                let Ok(text) = model.tokenizer.decode(&tokens) else {
                    continue;
                };
                let end = safe_len(&text, &ask.opts.stop);
                if end > sent && text.is_char_boundary(sent) {
                    let piece = &text[sent..end];
                    gone = http::send_event(stream, &chunk(Some(piece), None).to_string()).is_err();
                    sent = end;
                }
                if gone {
                    // Dropping the inbox frees the sequence at the scheduler's next step.
                    return Ok(());
                }
            }
            Ok(Event::Done { result, .. }) => break result,
            Err(_) => break Err(EngineError::Invalid("the scheduler stopped".into())),
        }
    };
    let (g, queue_ms, preemptions, steps) = match result {
        Ok(f) => (
            f.generation,
            f.queue_ms,
            f.preemptions,
            (f.first_step, f.last_step),
        ),
        Err(e) => {
            if ask.stream {
                let body = json!({"error": {"message": e.to_string(), "type": "server_error"}});
                let _ = http::send_event(stream, &body.to_string());
                let _ = stream.shutdown(std::net::Shutdown::Both);
                return Ok(());
            }
            let status = if matches!(e, EngineError::Invalid(_) | EngineError::TooLong { .. }) {
                400
            } else {
                500
            };
            return Err(ApiError(status, e.to_string()));
        }
    };
    let (finish, stop_reason) = match g.finish_reason {
        FinishReason::Length => ("length", Value::Null),
        FinishReason::Eos => ("stop", Value::Null),
        FinishReason::Stop => {
            let s = ask
                .opts
                .stop
                .iter()
                .find(|s| {
                    model.tokenizer.decode(&g.tokens).is_ok_and(|t| {
                        t.get(g.text.len()..)
                            .is_some_and(|rest| rest.starts_with(s.as_str()))
                    })
                })
                .cloned();
            ("stop", s.map(Value::String).unwrap_or(Value::Null))
        }
    };
    let usage = json!({"prompt_tokens": g.prompt_tokens, "completion_tokens": g.output_tokens,
                       "total_tokens": g.prompt_tokens + g.output_tokens});
    let timings = json!({"prompt_n": g.prompt_tokens, "prompt_ms": g.prefill_ms,
                         "predicted_n": g.output_tokens, "predicted_ms": g.e2e_ms - g.prefill_ms});
    let kv = json!({
        "method": state.method.canonical(), "kv_dtype": state.dtype.name(),
        "finish_reason": match g.finish_reason {
            FinishReason::Eos => "eos", FinishReason::Stop => "stop", FinishReason::Length => "length" },
        "queue_ms": queue_ms, "preemptions": preemptions,
        "first_token_step": steps.0, "last_token_step": steps.1,
        "prefill_ms": g.prefill_ms, "ttft_ms": g.ttft_ms,
        "decode_ms": g.decode_ms, "e2e_ms": g.e2e_ms, "decode_ms_p50": g.decode_ms_p50,
        "decode_ms_p90": g.decode_ms_p90, "decode_ms_max": g.decode_ms_max,
        "kv_bytes_peak": g.kv_bytes_peak, "kv_bytes_end": g.kv_bytes_end,
        "kv_bytes_full": g.kv_bytes_full, "kv_tokens_kept": g.kv_tokens_kept,
    });
    let fin = json!({"finish_reason": finish, "stop_reason": stop_reason});
    if ask.stream {
        if gone {
            return Ok(());
        }
        let rest = if g.text.len() > sent && g.text.is_char_boundary(sent) {
            &g.text[sent..]
        } else {
            ""
        };
        let mut last = chunk((!rest.is_empty()).then_some(rest), Some(fin));
        if chat && rest.is_empty() {
            last["choices"][0]["delta"] = json!({});
        }
        let mut events = vec![last];
        let mut tail = json!({"id": id, "object": object, "created": created,
                              "model": state.name, "choices": [],
                              "timings": timings, "kvlens": kv});
        if ask.usage_in_stream {
            tail["usage"] = usage;
        }
        events.push(tail);
        for e in events {
            if http::send_event(stream, &e.to_string()).is_err() {
                return Ok(());
            }
        }
        let _ = http::send_event(stream, "[DONE]");
        let _ = stream.shutdown(std::net::Shutdown::Both);
        return Ok(());
    }
    let mut choice = if chat {
        json!({"index": 0, "message": {"role": "assistant", "content": g.text}})
    } else {
        json!({"index": 0, "text": g.text})
    };
    choice["finish_reason"] = fin["finish_reason"].clone();
    choice["stop_reason"] = fin["stop_reason"].clone();
    let body = json!({"id": id, "object": object, "created": created, "model": state.name,
                      "choices": [choice], "usage": usage, "timings": timings, "kvlens": kv});
    http::respond(stream, 200, "application/json", body.to_string().as_bytes());
    Ok(())
}

/// The scheduler's thread: takes jobs as they come, runs engine steps while any request
/// waits or runs, and sends each request's events to its handler. A handler that stopped
/// listening (its client went away) has its request cancelled. Ends when the server is gone.
fn schedule(model: &Model, limits: Limits, inbox: mpsc::Receiver<Job>) {
    let Ok(mut sched) = Scheduler::new(model, limits) else {
        return;
    };
    let mut clients: HashMap<u64, mpsc::Sender<Event>> = HashMap::new();
    let take =
        |sched: &mut Scheduler, clients: &mut HashMap<u64, mpsc::Sender<Event>>, job: Job| {
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
    use super::safe_len;

    #[test]
    fn text_that_may_become_a_stop_string_is_held_back() {
        let stop = vec!["\n\n".to_string(), "END".to_string()];
        assert_eq!(safe_len("abc", &stop), 3);
        assert_eq!(safe_len("abc\n", &stop), 3);
        assert_eq!(safe_len("abc\nx", &stop), 5);
        assert_eq!(safe_len("abcEN", &stop), 3);
        assert_eq!(safe_len("ab\u{FFFD}", &[]), 2);
    }
}

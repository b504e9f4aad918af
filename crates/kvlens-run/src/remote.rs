//! The `openai` backend: a method whose samples are sent to an OpenAI-compatible server
//! (vLLM, SGLang, LMDeploy, llama.cpp's server, `kvlens serve`) and timed from its stream.

use kvlens_wire::{
    ChatMessage, Completion, CompletionRequest, Content, Prompt, Stats, Stop, StreamOptions,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::io::{BufRead, BufReader, Read};
use std::time::{Duration, Instant};

/// Which API a method's requests go to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Endpoint {
    /// `/chat/completions` for tasks that use the chat template, `/completions` for the rest.
    #[default]
    Auto,
    Chat,
    Completions,
}

/// A method served elsewhere: `[methods.NAME] backend = "openai"` in a run config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Remote {
    /// `openai`.
    pub backend: String,
    /// The API root, e.g. `http://localhost:8000/v1`.
    pub base_url: String,
    /// The model name the server knows; records carry it as their `model`.
    pub model: String,
    /// The environment variable holding the API key (sent as a bearer token). The key never
    /// appears in records, logs or errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    #[serde(default)]
    pub endpoint: Endpoint,
    /// Requests in flight to this server (default: the run's `concurrency`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<usize>,
    /// Seconds one attempt may take, stream included.
    #[serde(default = "default_timeout")]
    pub timeout_s: f64,
    /// Attempts after the first on 408, 429, 5xx, connection errors and cut streams.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// The first wait before a retry; it doubles each time (at most 60 s), or follows the
    /// server's `Retry-After`.
    #[serde(default = "default_backoff")]
    pub backoff_ms: u64,
    /// Extra fields merged into every request body (e.g. vLLM's `ignore_eos`).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub extra_body: Map<String, Value>,
}

fn default_timeout() -> f64 {
    600.0
}
fn default_retries() -> u32 {
    3
}
fn default_backoff() -> u64 {
    1000
}

impl Remote {
    /// Checks the fields and reads the key from the environment.
    pub fn prepare(&self, name: &str) -> Result<Client, String> {
        if self.backend != "openai" {
            return Err(format!(
                "method `{name}`: backend `{}` is not known; expected `local` or `openai`",
                self.backend
            ));
        }
        let url = self.base_url.trim_end_matches('/');
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!(
                "method `{name}`: base_url `{}` must start with http:// or https://",
                self.base_url
            ));
        }
        if !(self.timeout_s > 0.0 && self.timeout_s.is_finite()) {
            return Err(format!("method `{name}`: timeout_s must be positive"));
        }
        const SET_HERE: [&str; 13] = [
            "model",
            "messages",
            "prompt",
            "max_tokens",
            "max_completion_tokens",
            "temperature",
            "top_p",
            "top_k",
            "seed",
            "stop",
            "n",
            "stream",
            "stream_options",
        ];
        if let Some(k) = self
            .extra_body
            .keys()
            .find(|k| SET_HERE.contains(&k.as_str()))
        {
            return Err(format!(
                "method `{name}`: extra_body.{k} is a field kvlens sets from the task and the \
                 run's settings; set it there instead"
            ));
        }
        if self.concurrency == Some(0) {
            return Err(format!("method `{name}`: concurrency must be at least 1"));
        }
        let key = match &self.api_key_env {
            None => None,
            Some(var) => match std::env::var(var) {
                Ok(k) if !k.is_empty() => Some(k),
                _ => {
                    return Err(format!(
                        "method `{name}`: the environment variable {var} (its api_key_env) is \
                         not set"
                    ))
                }
            },
        };
        let agent = ureq::AgentBuilder::new()
            // Keep-alive for every request a load point has in flight, not only one per host.
            .max_idle_connections(1024)
            .max_idle_connections_per_host(1024)
            .timeout_connect(Duration::from_secs_f64(self.timeout_s.min(30.0)))
            .timeout(Duration::from_secs_f64(self.timeout_s))
            .build();
        Ok(Client {
            remote: self.clone(),
            url: url.to_string(),
            key,
            agent,
        })
    }

    /// The server as records name it: the URL without credentials or query.
    pub fn server_label(&self) -> String {
        let url = self.base_url.trim_end_matches('/');
        let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
        let rest = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
        let rest = rest.split(['?', '#']).next().unwrap_or(rest);
        format!("{scheme}://{rest}")
    }
}

/// One sample's request.
#[derive(Debug, Clone)]
pub struct Request {
    pub prompt: String,
    /// The task wraps its prompt in the chat template.
    pub chat: bool,
    pub max_tokens: usize,
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: usize,
    pub seed: u64,
    pub stop: Vec<String>,
}

/// What the server answered, timed at this end.
#[derive(Debug, Clone, Default)]
pub struct Reply {
    pub text: String,
    /// `eos`, `stop` or `length`.
    pub finish_reason: String,
    pub prompt_tokens: Option<usize>,
    pub completion_tokens: Option<usize>,
    /// From sending the request to the first piece of text (the whole time when none came).
    pub ttft_ms: f64,
    pub e2e_ms: f64,
    /// Gaps between pieces of text after the first.
    pub gaps_ms: Vec<f64>,
    /// The prompt time the server reports (`kvlens.prefill_ms`, or llama.cpp's
    /// `timings.prompt_ms`).
    pub server_prefill_ms: Option<f64>,
    /// `kvlens serve`'s own measurements (cache bytes, method).
    pub kvlens: Option<Stats>,
    pub attempts: u32,
    /// Time spent here on the request itself (writing the body, parsing the stream's events),
    /// not waiting on the server.
    pub client_ms: f64,
}

/// Why an attempt failed.
#[derive(Debug, Clone)]
pub struct Failure {
    pub msg: String,
    pub retry: bool,
    pub retry_after: Option<Duration>,
}

fn fail(msg: impl Into<String>, retry: bool) -> Failure {
    Failure {
        msg: msg.into(),
        retry,
        retry_after: None,
    }
}

/// A method's connection settings, ready to send.
pub struct Client {
    pub remote: Remote,
    url: String,
    key: Option<String>,
    agent: ureq::Agent,
}

impl Client {
    fn endpoint(&self, chat: bool) -> Endpoint {
        match self.remote.endpoint {
            Endpoint::Auto if chat => Endpoint::Chat,
            Endpoint::Auto => Endpoint::Completions,
            e => e,
        }
    }

    /// The request body (without the key, which travels in a header).
    pub fn body(&self, req: &Request, rendered: Option<&str>) -> CompletionRequest {
        let chat = self.endpoint(req.chat) == Endpoint::Chat;
        CompletionRequest {
            model: self.remote.model.clone(),
            messages: chat.then(|| {
                vec![ChatMessage {
                    role: "user".into(),
                    content: Content::Text(req.prompt.clone()),
                }]
            }),
            prompt: (!chat).then(|| Prompt::Text(rendered.unwrap_or(&req.prompt).to_string())),
            max_tokens: Some(req.max_tokens as u64),
            temperature: Some(req.temperature as f64),
            top_p: Some(req.top_p as f64),
            top_k: (req.top_k > 0).then_some(req.top_k as i64),
            seed: Some(req.seed),
            stop: (!req.stop.is_empty()).then(|| Stop::Many(req.stop.clone())),
            stream: Some(true),
            stream_options: Some(StreamOptions {
                include_usage: true,
            }),
            extra: self.remote.extra_body.clone(),
            ..CompletionRequest::default()
        }
    }

    /// Sends `req`, retrying what may pass on a second try; the error of the last attempt
    /// otherwise. `rendered` is the chat prompt rendered here, for a chat task sent to
    /// `/completions`.
    pub fn complete(&self, req: &Request, rendered: Option<&str>) -> Result<Reply, String> {
        let t = Instant::now();
        let body = serde_json::to_string(&self.body(req, rendered))
            .map_err(|e| format!("writing the request: {e}"))?;
        let body_ms = ms(t, Instant::now());
        let mut wait = Duration::from_millis(self.remote.backoff_ms);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.attempt(req.chat, &body) {
                Ok(mut r) => {
                    r.attempts = attempt;
                    r.client_ms += body_ms;
                    return Ok(r);
                }
                Err(f) => {
                    if !f.retry || attempt > self.remote.retries {
                        let tries = if attempt > 1 {
                            format!(" (after {attempt} attempts)")
                        } else {
                            String::new()
                        };
                        return Err(self.redact(&format!("{}{tries}", f.msg)));
                    }
                    tracing::debug!("{}: attempt {attempt}: {}", self.url, self.redact(&f.msg));
                    std::thread::sleep(f.retry_after.unwrap_or(wait).min(Duration::from_secs(60)));
                    wait = (wait * 2).min(Duration::from_secs(60));
                }
            }
        }
    }

    /// The first model id the server's `GET /models` lists (what a request names when no
    /// model is given).
    pub fn first_model(&self) -> Result<String, String> {
        let url = format!("{}/models", self.url);
        let mut call = self.agent.get(&url);
        if let Some(k) = &self.key {
            call = call.set("Authorization", &format!("Bearer {k}"));
        }
        let resp = call
            .call()
            .map_err(|e| self.redact(&format!("{url}: {e}")))?;
        let list: kvlens_wire::ModelList = resp
            .into_json()
            .map_err(|e| format!("{url}: not a model list: {e}"))?;
        list.data
            .first()
            .map(|m| m.id.clone())
            .ok_or_else(|| format!("{url} lists no model; give one with model=NAME"))
    }

    /// The key never leaves this process in a message, whatever a server echoes.
    fn redact(&self, s: &str) -> String {
        match &self.key {
            Some(k) if k.len() >= 4 => s.replace(k.as_str(), "[api key]"),
            _ => s.to_string(),
        }
    }

    fn attempt(&self, chat: bool, body: &str) -> Result<Reply, Failure> {
        let path = match self.endpoint(chat) {
            Endpoint::Chat => "chat/completions",
            _ => "completions",
        };
        let url = format!("{}/{path}", self.url);
        let mut call = self
            .agent
            .post(&url)
            .set("Content-Type", "application/json")
            .set("Accept", "text/event-stream");
        if let Some(k) = &self.key {
            call = call.set("Authorization", &format!("Bearer {k}"));
        }
        let start = Instant::now();
        let resp = match call.send_string(body) {
            Ok(r) => r,
            Err(ureq::Error::Status(code, r)) => {
                let retry_after = r
                    .header("retry-after")
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .filter(|s| s.is_finite() && *s >= 0.0)
                    .map(Duration::from_secs_f64);
                let mut text = String::new();
                let _ = r.into_reader().take(2000).read_to_string(&mut text);
                let detail = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| {
                        v.pointer("/error/message")
                            .or_else(|| v.get("message"))
                            .or_else(|| v.get("detail"))
                            .and_then(Value::as_str)
                            .map(String::from)
                    })
                    .unwrap_or_else(|| text.trim().chars().take(300).collect());
                return Err(Failure {
                    msg: format!("{url} answered HTTP {code}: {detail}"),
                    retry: code == 408 || code == 429 || code >= 500,
                    retry_after,
                });
            }
            Err(ureq::Error::Transport(t)) => {
                let msg = if t.to_string().contains("timed out") {
                    format!(
                        "no complete answer within timeout_s = {} s",
                        self.remote.timeout_s
                    )
                } else {
                    t.to_string()
                };
                let msg = if msg.contains(&url) {
                    msg
                } else {
                    format!("{url}: {msg}")
                };
                return Err(fail(msg, true));
            }
        };
        let streamed = resp.content_type().contains("event-stream");
        let mut reader = BufReader::new(resp.into_reader());
        if streamed {
            read_stream(&mut reader, start, &url)
        } else {
            // A server that ignores `stream`: one JSON body.
            let mut text = String::new();
            reader
                .read_to_string(&mut text)
                .map_err(|e| fail(format!("{url}: reading the response: {e}"), true))?;
            let v: Completion = serde_json::from_str(&text).map_err(|e| {
                fail(
                    format!(
                        "{url}: the response is not a valid completion ({e}): {}",
                        clip(&text)
                    ),
                    false,
                )
            })?;
            let mut st = Stream::default();
            st.event(&v, start, &url, Instant::now())?;
            st.finish(start, &url)
        }
    }
}

fn clip(s: &str) -> String {
    let t: String = s.chars().take(200).collect();
    if t.len() < s.len() {
        format!("{t}…")
    } else {
        t
    }
}

#[derive(Default)]
struct Stream {
    reply: Reply,
    first: Option<Instant>,
    last: Option<Instant>,
    finish: Option<String>,
    stop_reason: Option<Value>,
    events: usize,
}

impl Stream {
    /// One event, `at` the moment its bytes were read off the connection (before parsing).
    fn event(
        &mut self,
        v: &Completion,
        start: Instant,
        url: &str,
        at: Instant,
    ) -> Result<(), Failure> {
        self.events += 1;
        if let Some(e) = &v.error {
            return Err(fail(
                format!("{url}: the server reported an error: {}", e.message),
                false,
            ));
        }
        if let Some(choice) = v.choices.first() {
            let piece = choice.piece();
            if !piece.is_empty() {
                let now = at;
                match self.last {
                    None => {
                        self.first = Some(now);
                        self.reply.ttft_ms = ms(start, now);
                    }
                    Some(prev) => self.reply.gaps_ms.push(ms(prev, now)),
                }
                self.last = Some(now);
                self.reply.text.push_str(piece);
            }
            if let Some(f) = &choice.finish_reason {
                self.finish = Some(f.clone());
                self.stop_reason = choice.stop_reason.clone();
            }
        }
        if let Some(u) = &v.usage {
            let n = |x: Option<u64>| x.map(|x| x as usize);
            self.reply.prompt_tokens = n(u.prompt_tokens).or(self.reply.prompt_tokens);
            self.reply.completion_tokens = n(u.completion_tokens).or(self.reply.completion_tokens);
        }
        if let Some(t) = v.timings.as_ref().and_then(|t| t.prompt_ms) {
            self.reply.server_prefill_ms = Some(t);
        }
        if let Some(k) = &v.kvlens {
            self.reply.server_prefill_ms = Some(k.prefill_ms);
            self.reply.kvlens = Some(k.clone());
        }
        Ok(())
    }

    fn finish(mut self, start: Instant, url: &str) -> Result<Reply, Failure> {
        let Some(f) = self.finish else {
            return Err(fail(
                format!(
                    "{url}: the stream ended before the answer was complete (no finish_reason \
                     after {} events, {} characters of text)",
                    self.events,
                    self.reply.text.chars().count()
                ),
                true,
            ));
        };
        self.reply.finish_reason = match f.as_str() {
            "length" => "length".into(),
            // OpenAI says `stop` for both; vLLM and kvlens name the stop string in
            // `stop_reason` when one ended the answer.
            "stop" if matches!(self.stop_reason, Some(Value::String(_))) => "stop".into(),
            "stop" | "eos" => "eos".into(),
            other => other.to_string(),
        };
        self.reply.e2e_ms = ms(start, Instant::now());
        if self.first.is_none() {
            self.reply.ttft_ms = self.reply.e2e_ms;
        }
        Ok(self.reply)
    }
}

fn read_stream(reader: &mut impl BufRead, start: Instant, url: &str) -> Result<Reply, Failure> {
    let mut st = Stream::default();
    let mut line = String::new();
    let mut data = String::new();
    // When the current event's first data line came off the connection.
    let mut data_at = Instant::now();
    loop {
        line.clear();
        let n = reader.read_line(&mut line).map_err(|e| {
            let why = if e.kind() == std::io::ErrorKind::TimedOut
                || e.to_string().contains("timed out")
            {
                "timed out (timeout_s)".to_string()
            } else {
                e.to_string()
            };
            fail(
                format!("{url}: the stream broke after {} events: {why}", st.events),
                true,
            )
        })?;
        let read_at = Instant::now();
        let l = line.trim_end_matches(['\r', '\n']);
        if n == 0 || l.is_empty() {
            // An event ends at a blank line (or at the end of the body).
            if !data.is_empty() {
                if data.trim() == "[DONE]" {
                    return st.finish(start, url);
                }
                let v: Completion = serde_json::from_str(&data).map_err(|e| {
                    let what = if e.is_syntax() || e.is_eof() {
                        "valid JSON"
                    } else {
                        "a valid completion chunk"
                    };
                    fail(
                        format!(
                            "{url}: stream event {} is not {what} ({e}): {}",
                            st.events + 1,
                            clip(&data)
                        ),
                        false,
                    )
                })?;
                st.event(&v, start, url, data_at)?;
                st.reply.client_ms += ms(read_at, Instant::now());
                data.clear();
            }
            if n == 0 {
                return st.finish(start, url);
            }
            continue;
        }
        if let Some(d) = l.strip_prefix("data:") {
            if data.is_empty() {
                data_at = read_at;
            } else {
                data.push('\n');
            }
            data.push_str(d.strip_prefix(' ').unwrap_or(d));
        }
        // `event:`, `id:`, `retry:` and `:` comments carry nothing kvlens uses.
    }
}

fn ms(a: Instant, b: Instant) -> f64 {
    b.duration_since(a).as_secs_f64() * 1e3
}

/// The p-quantile of `xs` as the engine reports its decode steps (nearest rank).
pub fn quantile(xs: &[f64], p: f64) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    let mut s = xs.to_vec();
    s.sort_by(f64::total_cmp);
    s[((s.len() - 1) as f64 * p).round() as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_on_blank_lines_and_ignore_comments() {
        let text = ": keep-alive\n\ndata: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n\
                    data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\r\n\r\n\
                    data: {\"choices\":[{\"delta\":{\"content\":\"lo\"},\"finish_reason\":\"stop\",\"stop_reason\":\"\\n\"}]}\n\n\
                    data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2}}\n\n\
                    data: [DONE]\n\n";
        let r = read_stream(&mut text.as_bytes(), Instant::now(), "u").unwrap();
        assert_eq!(r.text, "Hello");
        assert_eq!(r.finish_reason, "stop");
        assert_eq!(r.prompt_tokens, Some(7));
        assert_eq!(r.completion_tokens, Some(2));
        assert_eq!(r.gaps_ms.len(), 1);
    }

    #[test]
    fn a_cut_stream_and_bad_json_are_failures() {
        let cut = "data: {\"choices\":[{\"text\":\"abc\"}]}\n\n";
        let e = read_stream(&mut cut.as_bytes(), Instant::now(), "u").unwrap_err();
        assert!(e.retry && e.msg.contains("ended before"), "{}", e.msg);
        let bad = "data: {\"choices\":[{\"text\":\"abc\"}]}\n\ndata: {oops\n\n";
        let e = read_stream(&mut bad.as_bytes(), Instant::now(), "u").unwrap_err();
        assert!(
            !e.retry && e.msg.contains("event 2 is not valid JSON"),
            "{}",
            e.msg
        );
    }

    #[test]
    fn server_labels_drop_credentials() {
        let r = Remote {
            backend: "openai".into(),
            base_url: "https://user:secret@host:8000/v1?token=x".into(),
            model: "m".into(),
            api_key_env: None,
            endpoint: Endpoint::Auto,
            concurrency: None,
            timeout_s: 1.0,
            retries: 0,
            backoff_ms: 0,
            extra_body: Map::new(),
        };
        assert_eq!(r.server_label(), "https://host:8000/v1");
    }
}

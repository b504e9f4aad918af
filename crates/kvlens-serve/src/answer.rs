//! One completion: the request to the scheduler, and its events back as a whole body or as a
//! stream of server-sent events.

use crate::ask::parse;
use crate::{ApiError, App, Job};
use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use kvlens_engine::sched::{self, Event, Finished};
use kvlens_engine::FinishReason;
use kvlens_wire::{Choice, Completion, Delta, ErrorDetail, Stats, Timings, Usage};
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc as amsc;

/// Counts a request in flight while it lives.
struct InFlight(Arc<App>);

impl InFlight {
    fn new(app: &Arc<App>) -> Self {
        let now = app.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        app.max_in_flight.fetch_max(now, Ordering::SeqCst);
        Self(app.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The answer being built from the scheduler's events.
struct Answer {
    app: Arc<App>,
    id: String,
    object: &'static str,
    created: u64,
    model: String,
    method: String,
    chat: bool,
    stream: bool,
    usage_in_stream: bool,
    stop: Vec<String>,
    tokens: Vec<u32>,
    /// Bytes of text already sent.
    sent: usize,
}

pub(crate) async fn complete(app: Arc<App>, _h: HeaderMap, body: Bytes, chat: bool) -> Response {
    match start(app, &body, chat).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn start(app: Arc<App>, body: &[u8], chat: bool) -> Result<Response, ApiError> {
    let ask = parse(&app, body, chat)?;
    let n = app.ids.fetch_add(1, Ordering::SeqCst);
    let (events, mut inbox) = amsc::unbounded_channel();
    let job = Job {
        req: sched::Request {
            id: n,
            prompt: ask.ids,
            cache: sched::CacheSource::New(ask.served.spec.clone(), app.dtype),
            opts: ask.opts.clone(),
        },
        events,
    };
    let mut answer = Answer {
        app: app.clone(),
        id: format!("{}-{n}", if chat { "chatcmpl" } else { "cmpl" }),
        object: match (chat, ask.stream) {
            (true, true) => "chat.completion.chunk",
            (true, false) => "chat.completion",
            (false, _) => "text_completion",
        },
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        model: ask.served.id.clone(),
        method: ask.served.spec.canonical(),
        chat,
        stream: ask.stream,
        usage_in_stream: ask.usage_in_stream,
        stop: ask.opts.stop,
        tokens: Vec::new(),
        sent: 0,
    };
    let guard = InFlight::new(&app);
    app.submit(job)?;
    // The first event decides the status: a request the scheduler refuses (a prompt that
    // cannot fit the budget even alone) is a plain error, streaming or not.
    let first = inbox.recv().await.ok_or_else(stopped)?;
    if let Event::Done { result: Err(e), .. } = first {
        return Err(e.into());
    }
    if !answer.stream {
        let mut next = Some(first);
        loop {
            match next.take() {
                Some(Event::Token { token, .. }) => answer.tokens.push(token),
                Some(Event::Done { result, .. }) => {
                    let f = result.map_err(ApiError::from)?;
                    return Ok(Json(answer.whole(&f)).into_response());
                }
                None => {}
            }
            next = Some(inbox.recv().await.ok_or_else(stopped)?);
        }
    }
    let (out, mut out_rx) = amsc::channel::<SseEvent>(64);
    tokio::spawn(async move {
        let _guard = guard;
        let send =
            |c: &Completion| SseEvent::default().data(serde_json::to_string(c).unwrap_or_default());
        if answer.chat {
            let mut c = answer.chunk(None);
            c.choices[0].delta = Some(Delta {
                role: Some("assistant".into()),
                content: Some(String::new()),
            });
            if out.send(send(&c)).await.is_err() {
                return;
            }
        }
        let mut next = Some(first);
        loop {
            let e = match next.take() {
                Some(e) => e,
                None => match inbox.recv().await {
                    Some(e) => e,
                    None => {
                        let _ = out.send(failure("the scheduler stopped")).await;
                        return;
                    }
                },
            };
            match e {
                Event::Token { token, .. } => {
                    if let Some(c) = answer.token(token) {
                        // A client gone: returning drops the inbox, which frees the
                        // sequence at the scheduler's next step.
                        if out.send(send(&c)).await.is_err() {
                            return;
                        }
                    }
                }
                Event::Done { result, .. } => {
                    let f = match result {
                        Ok(f) => f,
                        Err(e) => {
                            let _ = out.send(failure(&e.to_string())).await;
                            return;
                        }
                    };
                    for c in answer.last(&f) {
                        if out.send(send(&c)).await.is_err() {
                            return;
                        }
                    }
                    let _ = out.send(SseEvent::default().data("[DONE]")).await;
                    return;
                }
            }
        }
    });
    let stream = futures_util::stream::poll_fn(move |cx| {
        out_rx
            .poll_recv(cx)
            .map(|e| e.map(Ok::<SseEvent, Infallible>))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

fn stopped() -> ApiError {
    ApiError(503, "the scheduler stopped".into())
}

/// An error inside a stream: one event, then the stream ends without `[DONE]`.
fn failure(msg: &str) -> SseEvent {
    let c = Completion {
        error: Some(ErrorDetail {
            message: msg.to_string(),
            kind: "server_error".into(),
            code: None,
        }),
        ..Completion::default()
    };
    SseEvent::default().data(serde_json::to_string(&c).unwrap_or_default())
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

impl Answer {
    fn chunk(&self, content: Option<&str>) -> Completion {
        let choice = if self.chat {
            Choice {
                delta: Some(Delta {
                    role: None,
                    content: content.map(String::from),
                }),
                ..Choice::default()
            }
        } else {
            Choice {
                text: Some(content.unwrap_or_default().to_string()),
                ..Choice::default()
            }
        };
        Completion {
            id: self.id.clone(),
            object: self.object.into(),
            created: self.created,
            model: self.model.clone(),
            choices: vec![choice],
            ..Completion::default()
        }
    }

    /// A new token: the chunk of text it makes sendable, if any.
    fn token(&mut self, token: u32) -> Option<Completion> {
        self.tokens.push(token);
        let text = self.app.model.tokenizer.decode(&self.tokens).ok()?;
        let end = safe_len(&text, &self.stop);
        if end > self.sent && text.is_char_boundary(self.sent) {
            let piece = text[self.sent..end].to_string();
            self.sent = end;
            return Some(self.chunk(Some(&piece)));
        }
        None
    }

    /// OpenAI's finish reason and vLLM's stop reason (the stop string that ended it).
    fn reasons(&self, f: &Finished) -> (String, serde_json::Value) {
        let g = &f.generation;
        match g.finish_reason {
            FinishReason::Length => ("length".into(), serde_json::Value::Null),
            FinishReason::Eos => ("stop".into(), serde_json::Value::Null),
            FinishReason::Stop => {
                let full = self
                    .app
                    .model
                    .tokenizer
                    .decode(&g.tokens)
                    .unwrap_or_default();
                let rest = full.get(g.text.len()..).unwrap_or_default();
                let s = self.stop.iter().find(|s| rest.starts_with(s.as_str()));
                (
                    "stop".into(),
                    s.map(|s| serde_json::Value::String(s.clone()))
                        .unwrap_or(serde_json::Value::Null),
                )
            }
        }
    }

    fn usage(f: &Finished) -> Usage {
        let g = &f.generation;
        Usage {
            prompt_tokens: Some(g.prompt_tokens as u64),
            completion_tokens: Some(g.output_tokens as u64),
            total_tokens: Some((g.prompt_tokens + g.output_tokens) as u64),
        }
    }

    fn timings(f: &Finished) -> Timings {
        let g = &f.generation;
        Timings {
            prompt_n: Some(g.prompt_tokens as u64),
            prompt_ms: Some(g.prefill_ms),
            predicted_n: Some(g.output_tokens as u64),
            predicted_ms: Some(g.e2e_ms - g.prefill_ms),
        }
    }

    fn stats(&self, f: &Finished) -> Stats {
        let g = &f.generation;
        Stats {
            method: self.method.clone(),
            kv_dtype: self.app.dtype.name().into(),
            finish_reason: match g.finish_reason {
                FinishReason::Eos => "eos",
                FinishReason::Stop => "stop",
                FinishReason::Length => "length",
            }
            .into(),
            queue_ms: f.queue_ms,
            preemptions: f.preemptions as u64,
            first_token_step: f.first_step as u64,
            last_token_step: f.last_step as u64,
            prefill_ms: g.prefill_ms,
            ttft_ms: g.ttft_ms,
            decode_ms: g.decode_ms,
            e2e_ms: g.e2e_ms,
            decode_ms_p50: g.decode_ms_p50,
            decode_ms_p90: g.decode_ms_p90,
            decode_ms_max: g.decode_ms_max,
            kv_bytes_peak: g.kv_bytes_peak as u64,
            kv_bytes_end: g.kv_bytes_end as u64,
            kv_bytes_full: g.kv_bytes_full as u64,
            kv_tokens_kept: g.kv_tokens_kept,
        }
    }

    /// The whole answer, for `stream: false`.
    fn whole(&self, f: &Finished) -> Completion {
        let (finish, stop_reason) = self.reasons(f);
        let text = f.generation.text.clone();
        let mut choice = if self.chat {
            Choice {
                message: Some(Delta {
                    role: Some("assistant".into()),
                    content: Some(text),
                }),
                ..Choice::default()
            }
        } else {
            Choice {
                text: Some(text),
                ..Choice::default()
            }
        };
        choice.finish_reason = Some(finish);
        choice.stop_reason = Some(stop_reason);
        Completion {
            id: self.id.clone(),
            object: self.object.into(),
            created: self.created,
            model: self.model.clone(),
            choices: vec![choice],
            usage: Some(Self::usage(f)),
            timings: Some(Self::timings(f)),
            kvlens: Some(self.stats(f)),
            error: None,
        }
    }

    /// The stream's last events: the rest of the text with the finish reason, then the
    /// timings, kvlens's measurements and (when asked) the usage, with no choices.
    fn last(&self, f: &Finished) -> Vec<Completion> {
        let g = &f.generation;
        let rest = if g.text.len() > self.sent && g.text.is_char_boundary(self.sent) {
            &g.text[self.sent..]
        } else {
            ""
        };
        let mut last = self.chunk((!rest.is_empty()).then_some(rest));
        let (finish, stop_reason) = self.reasons(f);
        if self.chat && rest.is_empty() {
            last.choices[0].delta = Some(Delta::default());
        }
        last.choices[0].finish_reason = Some(finish);
        last.choices[0].stop_reason = Some(stop_reason);
        let tail = Completion {
            id: self.id.clone(),
            object: self.object.into(),
            created: self.created,
            model: self.model.clone(),
            choices: Vec::new(),
            usage: self.usage_in_stream.then(|| Self::usage(f)),
            timings: Some(Self::timings(f)),
            kvlens: Some(self.stats(f)),
            error: None,
        };
        vec![last, tail]
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

//! The OpenAI-compatible wire format, as `kvlens serve` writes it and the `openai` backend
//! reads it: one set of types on both sides, so that the two cannot drift apart.
//!
//! The shapes follow OpenAI's Completions and Chat Completions APIs (request bodies, the
//! `data:` chunks of a stream, the final body), with the two additions other servers make and
//! kvlens reads: llama.cpp's `timings` and vLLM's `stop_reason`. kvlens's own measurements
//! travel in [`Stats`] under `kvlens`. Readers are lenient: every response field is optional,
//! unknown fields are ignored, so answers from vLLM, SGLang or llama.cpp's server parse too.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The body of `POST /v1/completions` and `POST /v1/chat/completions`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CompletionRequest {
    #[serde(default)]
    pub model: String,
    /// Chat Completions: the conversation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<ChatMessage>>,
    /// Completions: the prompt (a string, or a list holding one string).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<Prompt>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Not OpenAI's, but vLLM, SGLang and llama.cpp take it; 0 or less means off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Stop>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u64>,
    /// vLLM's: generate to `max_tokens` whatever the end-of-sequence token says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore_eos: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    /// Every other field: a client's `extra_body` (vLLM's `ignore_eos`, ...), and on the
    /// server's side the fields it checks it does not support (`logprobs`, `tools`, ...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    List(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s],
            Stop::Many(v) => v,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: Content,
}

/// A message's content: text, or a list of parts of which kvlens reads the text ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Part {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// A whole answer (`stream: false`) or one `data:` event of a stream: the same fields, the
/// stream's choices carrying `delta` where the whole answer's carry `message`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub object: String,
    #[serde(default)]
    pub created: u64,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub choices: Vec<Choice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// llama.cpp's server's timings (kvlens serve writes the same four fields).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timings: Option<Timings>,
    /// kvlens serve's own measurements, on the last event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kvlens: Option<Stats>,
    /// An error reported inside a stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    #[serde(default)]
    pub index: u64,
    /// Chat, whole answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<Delta>,
    /// Chat, stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<Delta>,
    /// Completions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// `stop` or `length` (some servers say `eos`); null until the last event.
    #[serde(default)]
    pub finish_reason: Option<String>,
    /// vLLM's: the stop string that ended the answer (null at the end of sequence).
    #[serde(default)]
    pub stop_reason: Option<Value>,
}

impl Choice {
    /// The text this choice carries, whichever field holds it.
    pub fn piece(&self) -> &str {
        self.delta
            .as_ref()
            .and_then(|d| d.content.as_deref())
            .or_else(|| self.message.as_ref().and_then(|m| m.content.as_deref()))
            .or(self.text.as_deref())
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: Option<u64>,
    #[serde(default)]
    pub completion_tokens: Option<u64>,
    #[serde(default)]
    pub total_tokens: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    #[serde(default)]
    pub prompt_n: Option<u64>,
    #[serde(default)]
    pub prompt_ms: Option<f64>,
    #[serde(default)]
    pub predicted_n: Option<u64>,
    #[serde(default)]
    pub predicted_ms: Option<f64>,
}

/// What `kvlens serve` measured for one answer, with the method that made it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Stats {
    /// The method's canonical spec.
    pub method: String,
    pub kv_dtype: String,
    /// `eos`, `stop` or `length` (kvlens's own, finer than OpenAI's).
    pub finish_reason: String,
    /// From arrival at the scheduler to the first step that computed the request.
    pub queue_ms: f64,
    pub preemptions: u64,
    /// The scheduler's step numbers of the first and last token, so that clients can order
    /// answers in the server's own event order.
    pub first_token_step: u64,
    pub last_token_step: u64,
    pub prefill_ms: f64,
    pub ttft_ms: f64,
    pub decode_ms: f64,
    pub e2e_ms: f64,
    pub decode_ms_p50: f64,
    pub decode_ms_p90: f64,
    pub decode_ms_max: f64,
    pub kv_bytes_peak: u64,
    pub kv_bytes_end: u64,
    pub kv_bytes_full: u64,
    pub kv_tokens_kept: f64,
}

/// `{"error": {...}}`, the body of every error answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    #[serde(default)]
    pub message: String,
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub code: Option<Value>,
}

/// `GET /v1/models`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelList {
    #[serde(default)]
    pub object: String,
    #[serde(default)]
    pub data: Vec<ModelEntry>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelEntry {
    pub id: String,
    #[serde(default)]
    pub object: String,
    #[serde(default)]
    pub owned_by: String,
    /// kvlens serve: the method this id selects (canonical spec).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kvlens_method: Option<String>,
    /// vLLM's name for the context length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_model_len: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_servers_chunks_parse() {
        // vLLM: null content, extra fields; llama.cpp: more timings than kvlens reads.
        let v: Completion = serde_json::from_str(
            r#"{"id":"x","object":"chat.completion.chunk","created":1,"model":"m",
                "choices":[{"index":0,"delta":{"content":null,"reasoning_content":"h"},
                "logprobs":null,"finish_reason":null}],"usage":null}"#,
        )
        .unwrap();
        assert_eq!(v.choices[0].piece(), "");
        let v: Completion = serde_json::from_str(
            r#"{"choices":[{"text":"Paris","finish_reason":"stop"}],
                "timings":{"prompt_n":5,"prompt_ms":1.5,"predicted_per_second":9.0}}"#,
        )
        .unwrap();
        assert_eq!(v.choices[0].piece(), "Paris");
        assert_eq!(v.timings.unwrap().prompt_ms, Some(1.5));
    }

    #[test]
    fn requests_keep_unknown_fields_and_round_trip() {
        let text = r#"{"model":"m","prompt":["a"],"max_tokens":4,"stop":"\n",
                       "ignore_eos":true,"min_tokens":2,"stream":true}"#;
        let r: CompletionRequest = serde_json::from_str(text).unwrap();
        assert_eq!(r.prompt, Some(Prompt::List(vec!["a".into()])));
        assert_eq!(r.stop.clone().map(Stop::into_vec), Some(vec!["\n".into()]));
        assert_eq!(r.ignore_eos, Some(true));
        assert_eq!(r.extra.get("min_tokens"), Some(&Value::from(2)));
        let again: CompletionRequest =
            serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(again, r);
    }
}

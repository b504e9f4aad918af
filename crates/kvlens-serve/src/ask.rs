//! A request body, read into what the scheduler needs, with an error that names the field.

use crate::{invalid, ApiError, App, Served};
use kvlens_engine::{GenOptions, Message, Sampling};
use kvlens_wire::{CompletionRequest, Content, Prompt};
use serde_json::Value;

/// What a request asks for, checked.
pub(crate) struct Ask<'a> {
    pub served: &'a Served,
    pub ids: Vec<u32>,
    pub opts: GenOptions,
    pub stream: bool,
    pub usage_in_stream: bool,
}

/// Fields of OpenAI's API that kvlens serve does not implement: refused rather than ignored.
const UNSUPPORTED: [&str; 6] = [
    "logprobs",
    "top_logprobs",
    "echo",
    "best_of",
    "tools",
    "response_format",
];

/// The message roles of OpenAI's chat API.
const ROLES: [&str; 5] = ["system", "developer", "user", "assistant", "tool"];

pub(crate) fn parse<'a>(app: &'a App, body: &[u8], chat: bool) -> Result<Ask<'a>, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    let req: CompletionRequest = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            invalid(format!("the body is not a valid request: {}", e.inner()))
        } else {
            invalid(format!("`{path}`: {}", e.inner()))
        }
    })?;
    if req.n.is_some_and(|n| n != 1) {
        return Err(invalid("only n = 1 is supported"));
    }
    for k in UNSUPPORTED {
        if req
            .extra
            .get(k)
            .is_some_and(|x| !x.is_null() && x != &Value::Bool(false))
        {
            return Err(invalid(format!("`{k}` is not supported by kvlens serve")));
        }
    }
    let served = app.select(&req.model)?;
    let model = &app.model;
    let ids = if chat {
        let msgs = req
            .messages
            .ok_or_else(|| invalid("`messages` must be an array"))?;
        let mut messages = Vec::new();
        for (i, m) in msgs.into_iter().enumerate() {
            // The roles of OpenAI's chat API; anything else is refused as it refuses it.
            if !ROLES.contains(&m.role.as_str()) {
                return Err(invalid(format!(
                    "messages[{i}].role: `{}` is not one of {}",
                    m.role,
                    ROLES.join(", ")
                )));
            }
            let content = match m.content {
                Content::Text(s) => s,
                Content::Parts(parts) => {
                    let mut s = String::new();
                    for p in parts {
                        match (p.kind.as_str(), p.text) {
                            ("text", Some(t)) => s.push_str(&t),
                            _ => {
                                return Err(invalid(format!(
                                    "messages[{i}].content: only text parts are supported"
                                )))
                            }
                        }
                    }
                    s
                }
            };
            messages.push(Message {
                role: m.role,
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
        let prompt = match req.prompt {
            Some(Prompt::Text(s)) => s,
            Some(Prompt::List(mut a)) if a.len() == 1 => a.remove(0),
            Some(Prompt::List(_)) => {
                return Err(invalid(
                    "`prompt`: only one prompt per request is supported",
                ))
            }
            None => return Err(invalid("`prompt` must be a string")),
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
    let max_tokens = match req.max_completion_tokens.or(req.max_tokens) {
        Some(0) => return Err(invalid("`max_tokens` must be a positive integer")),
        Some(m) => m as usize,
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
    let temperature = req.temperature.unwrap_or(1.0);
    let top_p = req.top_p.unwrap_or(1.0);
    if !(0.0..=100.0).contains(&temperature) || !(0.0..=1.0).contains(&top_p) {
        return Err(invalid("temperature must be >= 0 and top_p within [0, 1]"));
    }
    let top_k = req.top_k.unwrap_or(0).max(0) as usize;
    Ok(Ask {
        served,
        ids,
        opts: GenOptions {
            max_new_tokens: max_tokens,
            sampling: Sampling {
                temperature: temperature as f32,
                top_k,
                top_p: top_p as f32,
                seed: req.seed.unwrap_or(0),
            },
            stop: req.stop.map(|s| s.into_vec()).unwrap_or_default(),
            ignore_eos: req.ignore_eos.unwrap_or(false),
            ..GenOptions::default()
        },
        stream: req.stream.unwrap_or(false),
        usage_in_stream: req.stream_options.is_some_and(|o| o.include_usage),
    })
}

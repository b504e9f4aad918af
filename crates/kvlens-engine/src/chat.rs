//! Chat prompts rendered with the model's own Jinja template.
//!
//! Message contents are rendered as placeholders, then encoded apart from the template text:
//! the template's markers (`<|im_start|>`) become special tokens, while anything a user wrote
//! (even `<|im_end|>`) stays plain text.

use crate::error::{EngineError, Result};
use crate::tokenizer::Tokenizer;
use minijinja::{context, Environment, Error, ErrorKind};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: "user".into(),
            content: content.into(),
        }
    }
}

pub struct ChatTemplate {
    source: String,
    bos: String,
    eos: String,
}

fn placeholder(i: usize) -> String {
    format!("\u{1}kvlens-message-{i}\u{1}")
}

impl ChatTemplate {
    pub fn new(source: impl Into<String>, bos: impl Into<String>, eos: impl Into<String>) -> Self {
        Self {
            source: source.into(),
            bos: bos.into(),
            eos: eos.into(),
        }
    }

    fn render_raw(&self, messages: &[Message]) -> Result<String> {
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, Error> {
                Err(Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_template("chat", &self.source)
            .map_err(|e| EngineError::Template(e.to_string()))?;
        let tmpl = env
            .get_template("chat")
            .map_err(|e| EngineError::Template(e.to_string()))?;
        tmpl.render(context! {
            messages => messages,
            add_generation_prompt => true,
            bos_token => self.bos,
            eos_token => self.eos,
        })
        .map_err(|e| EngineError::Template(e.to_string()))
    }

    /// The rendered prompt as text (for display and hashing).
    pub fn render(&self, messages: &[Message]) -> Result<String> {
        self.render_raw(messages)
    }

    /// Renders and encodes `messages`: template text with special tokens, contents without.
    pub fn encode(&self, tok: &Tokenizer, messages: &[Message]) -> Result<Vec<u32>> {
        let masked: Vec<Message> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| Message {
                role: m.role.clone(),
                content: placeholder(i),
            })
            .collect();
        let rendered = self.render_raw(&masked)?;
        let mut ids = Vec::new();
        let mut rest = rendered.as_str();
        for (i, m) in messages.iter().enumerate() {
            let ph = placeholder(i);
            let at = rest.find(&ph).ok_or_else(|| {
                EngineError::Template(format!(
                    "the template does not include message {i} verbatim; kvlens cannot tell \
                     its text from the template's"
                ))
            })?;
            ids.extend(tok.encode_special(&rest[..at])?);
            ids.extend(tok.encode_text(&m.content)?);
            rest = &rest[at + ph.len()..];
        }
        ids.extend(tok.encode_special(rest)?);
        Ok(ids)
    }
}

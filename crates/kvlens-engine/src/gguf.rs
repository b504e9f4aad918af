//! A GGUF file: candle's reader for the header and metadata, and the tensor data mapped in
//! place so that weights are never copied.

use crate::error::{EngineError, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::GgmlDType;
use memmap2::Mmap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct Gguf {
    pub path: PathBuf,
    pub content: Content,
    map: Arc<Mmap>,
}

/// A tensor's raw bytes with its type and shape (GGUF order: fastest-varying first).
pub struct RawTensor<'a> {
    pub name: String,
    pub dtype: GgmlDType,
    /// (rows, columns): columns is the length of one row.
    pub rows: usize,
    pub cols: usize,
    pub data: &'a [u8],
    pub bytes: crate::quant::Bytes,
}

impl Gguf {
    pub fn open(path: &Path) -> Result<Self> {
        let err = |e: String| EngineError::Model {
            path: path.to_path_buf(),
            msg: e,
        };
        let mut f = File::open(path).map_err(|e| err(format!("cannot open: {e}")))?;
        let content = Content::read(&mut f).map_err(|e| err(format!("not a GGUF file: {e}")))?;
        // SAFETY: the file is opened read-only; kvlens never writes model files while they
        // are mapped.
        let map = unsafe { Mmap::map(&f) }.map_err(|e| err(format!("cannot map: {e}")))?;
        Ok(Self {
            path: path.to_path_buf(),
            content,
            map: Arc::new(map),
        })
    }

    fn missing(&self, key: &str) -> EngineError {
        EngineError::Model {
            path: self.path.clone(),
            msg: format!("metadata key `{key}` is missing or has the wrong type"),
        }
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    pub fn u32(&self, key: &str) -> Result<u32> {
        self.get(key)
            .and_then(|v| {
                v.to_u32()
                    .ok()
                    .or_else(|| v.to_u64().ok().map(|x| x as u32))
            })
            .ok_or_else(|| self.missing(key))
    }

    pub fn f32(&self, key: &str) -> Result<f32> {
        self.get(key)
            .and_then(|v| v.to_f32().ok())
            .ok_or_else(|| self.missing(key))
    }

    pub fn string(&self, key: &str) -> Result<&str> {
        self.get(key)
            .and_then(|v| v.to_string().ok())
            .map(String::as_str)
            .ok_or_else(|| self.missing(key))
    }

    pub fn strings(&self, key: &str) -> Result<Vec<&str>> {
        let v = self
            .get(key)
            .and_then(|v| v.to_vec().ok())
            .ok_or_else(|| self.missing(key))?;
        v.iter()
            .map(|x| {
                x.to_string()
                    .map(String::as_str)
                    .map_err(|_| self.missing(key))
            })
            .collect()
    }

    pub fn i32s(&self, key: &str) -> Result<Vec<i32>> {
        let v = self
            .get(key)
            .and_then(|v| v.to_vec().ok())
            .ok_or_else(|| self.missing(key))?;
        v.iter()
            .map(|x| {
                x.to_i32()
                    .or_else(|_| x.to_u32().map(|u| u as i32))
                    .map_err(|_| self.missing(key))
            })
            .collect()
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    pub fn tensor(&self, name: &str) -> Result<RawTensor<'_>> {
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| EngineError::Model {
                path: self.path.clone(),
                msg: format!("tensor `{name}` is missing"),
            })?;
        let dims = info.shape.dims();
        let cols = *dims.last().unwrap_or(&1);
        let elems: usize = dims.iter().product();
        let rows = elems / cols.max(1);
        let bytes = elems / info.ggml_dtype.block_size() * info.ggml_dtype.type_size();
        let start = (self.content.tensor_data_offset + info.offset) as usize;
        let data = self
            .map
            .get(start..start + bytes)
            .ok_or_else(|| EngineError::Model {
                path: self.path.clone(),
                msg: format!("tensor `{name}` runs past the end of the file"),
            })?;
        Ok(RawTensor {
            name: name.to_string(),
            dtype: info.ggml_dtype,
            rows,
            cols,
            data,
            bytes: crate::quant::Bytes::Mapped(self.map.clone(), start..start + bytes),
        })
    }

    /// candle's own quantized tensor, for weight types kvlens has no kernel of its own for.
    pub fn qtensor(&self, name: &str) -> Result<candle_core::quantized::QTensor> {
        let mut f = File::open(&self.path)?;
        self.content
            .tensor(&mut f, name, &candle_core::Device::Cpu)
            .map_err(|e| EngineError::Model {
                path: self.path.clone(),
                msg: format!("reading tensor `{name}`: {e}"),
            })
    }
}

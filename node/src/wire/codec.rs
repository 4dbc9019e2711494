//! The request-response codec: one postcard value per stream, length-prefixed, size caps
//! checked before reading, frames read in chunks within an optional shared budget.

use std::io;
use std::marker::PhantomData;

use futures::prelude::*;
use libp2p::StreamProtocol;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Bytes that frames being read may hold at once across many streams (see
/// [`PostcardCodec::with_budget`]): a frame's reader takes a share of the budget for each
/// chunk before reading it, and gives it back once the frame is decoded. Readers wait
/// while the budget is spent, so memory held by partly read frames stays under it however
/// many streams are open.
#[derive(Clone, Debug)]
pub struct InboundBudget {
    kib: std::sync::Arc<tokio::sync::Semaphore>,
    total_kib: u32,
}

impl InboundBudget {
    /// A budget of `bytes` (rounded up to KiB).
    pub fn new(bytes: usize) -> Self {
        let total_kib = u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX).max(1);
        Self {
            kib: std::sync::Arc::new(tokio::sync::Semaphore::new(total_kib as usize)),
            total_kib,
        }
    }

    /// Bytes held by frames being read now.
    pub fn in_use(&self) -> usize {
        (self.total_kib as usize - self.kib.available_permits()) * 1024
    }

    fn reserve(&self) -> Reservation {
        Reservation {
            budget: self.clone(),
            held: None,
        }
    }
}

/// A frame's share of an [`InboundBudget`]; given back when dropped.
struct Reservation {
    budget: InboundBudget,
    held: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Reservation {
    async fn grow(&mut self, bytes: usize) {
        let kib = u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .min(self.budget.total_kib);
        // The semaphore is never closed.
        if let Ok(p) = self.budget.kib.clone().acquire_many_owned(kib).await {
            match self.held.as_mut() {
                Some(h) => h.merge(p),
                None => self.held = Some(p),
            }
        }
    }
}

/// A request-response codec: one postcard value per stream, length-prefixed with an
/// unsigned varint, with a maximum size for each direction checked before reading, read in
/// chunks as the bytes arrive (optionally within an [`InboundBudget`]).
#[derive(Debug)]
pub struct PostcardCodec<Req, Resp> {
    max_request: usize,
    max_response: usize,
    budget: Option<InboundBudget>,
    _types: PhantomData<fn() -> (Req, Resp)>,
}

impl<Req, Resp> Clone for PostcardCodec<Req, Resp> {
    fn clone(&self) -> Self {
        Self {
            max_request: self.max_request,
            max_response: self.max_response,
            budget: self.budget.clone(),
            _types: PhantomData,
        }
    }
}

impl<Req, Resp> PostcardCodec<Req, Resp> {
    /// A codec accepting requests up to `max_request` and responses up to `max_response` bytes.
    pub fn new(max_request: usize, max_response: usize) -> Self {
        Self {
            max_request,
            max_response,
            budget: None,
            _types: PhantomData,
        }
    }

    /// Frames read by this codec (and its clones) share `budget`.
    pub fn with_budget(mut self, budget: InboundBudget) -> Self {
        self.budget = Some(budget);
        self
    }
}

/// Bytes read from a stream at a time (and the unit of the inbound budget).
const READ_CHUNK: usize = 64 * 1024;

async fn read_frame<T: AsyncRead + Unpin + Send, V: DeserializeOwned>(
    io: &mut T,
    max: usize,
    budget: Option<&InboundBudget>,
) -> io::Result<V> {
    let mut len: u64 = 0;
    for shift in (0..64).step_by(7) {
        let mut b = [0u8; 1];
        io.read_exact(&mut b).await?;
        len |= u64::from(b[0] & 0x7f) << shift;
        if b[0] & 0x80 == 0 {
            break;
        }
        if shift >= 63 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "length prefix too long"));
        }
    }
    if len > max as u64 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the limit of {max}"),
        ));
    }
    // Grown as bytes arrive: a peer declaring a large frame and sending nothing costs
    // nothing, and one sending it costs what it sent.
    let len = len as usize;
    let mut buf = Vec::with_capacity(len.min(READ_CHUNK));
    let mut budget = budget.map(|b| b.reserve());
    while buf.len() < len {
        let chunk = (len - buf.len()).min(READ_CHUNK);
        if let Some(b) = budget.as_mut() {
            b.grow(chunk).await;
        }
        let start = buf.len();
        buf.resize(start + chunk, 0);
        io.read_exact(&mut buf[start..]).await?;
    }
    postcard::from_bytes(&buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("malformed frame: {e}")))
}

/// The length prefix of a frame of `len` bytes (an unsigned varint).
pub fn length_prefix(len: usize) -> Vec<u8> {
    let mut prefix = Vec::with_capacity(10);
    let mut len = len as u64;
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            prefix.push(byte);
            return prefix;
        }
        prefix.push(byte | 0x80);
    }
}

async fn write_frame<T: AsyncWrite + Unpin + Send, V: Serialize>(io: &mut T, value: &V, max: usize) -> io::Result<()> {
    let body = postcard::to_allocvec(value).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    if body.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("frame of {} bytes exceeds the limit of {max}", body.len()),
        ));
    }
    let mut prefix = length_prefix(body.len());
    prefix.extend_from_slice(&body);
    io.write_all(&prefix).await?;
    io.close().await
}

impl<Req, Resp> libp2p::request_response::Codec for PostcardCodec<Req, Resp>
where
    Req: Serialize + DeserializeOwned + Send + Sync + 'static,
    Resp: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    type Protocol = StreamProtocol;
    type Request = Req;
    type Response = Resp;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Req>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, self.max_request, self.budget.as_ref()).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Resp>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, self.max_response, self.budget.as_ref()).await
    }

    async fn write_request<T>(&mut self, _: &StreamProtocol, io: &mut T, req: Req) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &req, self.max_request).await
    }

    async fn write_response<T>(&mut self, _: &StreamProtocol, io: &mut T, res: Resp) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &res, self.max_response).await
    }
}

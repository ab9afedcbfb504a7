//! The gRPC codec every meshplane service uses: prost encoding tuned for a
//! server that holds tens of thousands of mostly idle streams. tonic keeps
//! one encode buffer per open stream, and an idle stream keeps the last
//! allocation it encoded into; configs are sent in parts of a few KiB, so
//! each message is encoded into a right-sized buffer ([`ExactEncoder`]) and
//! handed to the transport on its own ([`YIELD_THRESHOLD`]), instead of
//! being batched into 32 KiB buffers (tonic's default) that every idle
//! stream would then keep.

use std::marker::PhantomData;

use prost::Message;
use tonic::{
    Status,
    codec::{BufferSettings, Codec, EncodeBuf, Encoder},
};
use tonic_prost::{ProstCodec, ProstDecoder};

/// Initial encode buffer per call (it grows for larger messages).
pub const ENCODE_BUFFER: usize = 2 * 1024;
/// Encoded bytes after which a buffer is handed to the transport: every
/// message goes on its own.
pub const YIELD_THRESHOLD: usize = 1;

/// prost codec with [`ENCODE_BUFFER`]-sized encode buffers.
#[derive(Debug, Clone)]
pub struct SmallBufferCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SmallBufferCodec<T, U> {
    fn default() -> Self {
        SmallBufferCodec(PhantomData)
    }
}

impl<T, U> Codec for SmallBufferCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ExactEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ExactEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(BufferSettings::default())
    }
}

/// prost encoder that reserves a message's encoded length before writing it.
///
/// tonic's prost encoder lets the buffer grow while a message is written, in
/// steps, so a large message can leave a buffer of up to twice its size
/// behind for the idle stream to keep. Reserving the length first sizes the
/// buffer for the message at once.
#[derive(Debug)]
pub struct ExactEncoder<T>(PhantomData<T>);

impl<T: Message> Encoder for ExactEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.reserve(item.encoded_len());
        item.encode(buf)
            .map_err(|e| Status::internal(format!("encoding a message: {e}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(ENCODE_BUFFER, YIELD_THRESHOLD)
    }
}

//! The gRPC codec every meshplane service uses: prost encoding with a small
//! initial encode buffer. A server holds one encode buffer per open stream
//! (tens of thousands of agents), and configs are sent in parts of a few
//! KiB, so tonic's default of 8 KiB per stream would mostly be idle memory.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Initial encode buffer per call (it grows for larger messages).
pub const ENCODE_BUFFER: usize = 2 * 1024;
/// Encoded bytes after which a buffer is handed to the transport.
pub const YIELD_THRESHOLD: usize = 32 * 1024;

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
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::new(ENCODE_BUFFER, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(BufferSettings::default())
    }
}

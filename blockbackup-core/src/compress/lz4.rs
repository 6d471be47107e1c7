//! The lz4 decoder: lz4_flex's frame decoder, made to tell a stream that
//! ends where it should from one that was cut.
//!
//! An LZ4 frame is a header, blocks (each behind a 4-byte size) and an end
//! mark (a zero size, then the content checksum if the header asks for
//! one). lz4_flex's `FrameDecoder::read` returns 0 when it reads an end
//! mark, but also when its input ends where a block's size or a frame's
//! header should be. So a stored file cut between two blocks reads as a
//! shorter one, and one that lost only its end mark reads as intact: no
//! damage is reported, unlike gzip and zstd, whose decoders report a
//! stream that ends inside a member or a frame.
//!
//! This reader watches the input under the decoder. A read that returns 0
//! ends the stream only when it follows a frame's end mark and consumed
//! nothing: the input ended at a frame boundary. A 0 during which the
//! input ended anywhere else is a cut (`UnexpectedEof`), and so is an
//! empty input (every stored lz4 file holds at least one frame, even for
//! empty content). A 0 with the input still going is an end mark; the
//! next frame, if any, is read on. Legacy frames (`lz4 -l`), which have no
//! end mark, are therefore not read: nothing here writes them.

use std::io::{self, Read};

use lz4_flex::frame::FrameDecoder;

pub(super) struct Lz4Reader<R: Read> {
    decoder: FrameDecoder<Watched<R>>,
    /// The last frame ended with its end mark and nothing was read since.
    after_frame: bool,
}

impl<R: Read> Lz4Reader<R> {
    pub(super) fn new(inner: R) -> Self {
        Lz4Reader {
            decoder: FrameDecoder::new(Watched {
                inner,
                consumed: 0,
                ended: false,
            }),
            after_frame: false,
        }
    }
}

impl<R: Read> Read for Lz4Reader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let watched = self.decoder.get_mut();
            watched.ended = false;
            let consumed_before = watched.consumed;
            let read = self.decoder.read(buf).map_err(as_damage)?;
            if read > 0 {
                self.after_frame = false;
                return Ok(read);
            }
            let watched = self.decoder.get_ref();
            if !watched.ended {
                // An end mark: the stream may end here or hold another frame.
                self.after_frame = true;
                continue;
            }
            if self.after_frame && watched.consumed == consumed_before {
                return Ok(0);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the lz4 stream ends inside a frame (before its end mark)",
            ));
        }
    }
}

/// lz4_flex's own errors about the data (some of which it gives as
/// `Other`) made `InvalidData`; an error of the input keeps its kind.
fn as_damage(error: io::Error) -> io::Error {
    let from_decoder = error
        .get_ref()
        .is_some_and(|e| e.is::<lz4_flex::frame::Error>());
    if from_decoder && error.kind() == io::ErrorKind::Other {
        io::Error::new(io::ErrorKind::InvalidData, error.to_string())
    } else {
        error
    }
}

/// The decoder's input, counting what it gives and noting when it ends.
struct Watched<R> {
    inner: R,
    consumed: u64,
    /// The input returned 0 for a non-empty buffer during the current read.
    ended: bool,
}

impl<R: Read> Read for Watched<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        if read == 0 && !buf.is_empty() {
            self.ended = true;
        }
        self.consumed += read as u64;
        Ok(read)
    }
}

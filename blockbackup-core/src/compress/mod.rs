//! The one codec type every reader and writer of stored files uses: its
//! name (as settings, arguments and the catalog spell it), the suffix of
//! the files it writes, the levels it takes, and its encoder and decoder.
//!
//! * `none`: stored as read;
//! * `gzip` (flate2, levels 0 to 9, default 6): what the first release
//!   wrote, and what every tool reads;
//! * `zstd` (levels 1 to 19, default 3): fast and small, what pgBackRest
//!   and `pg_basebackup --compress=zstd` use;
//! * `lz4` (lz4_flex, in the LZ4 frame format that the `lz4` command reads;
//!   one level): the fastest, for when the disk, not the space, is scarce.
//!
//! Every file is compressed on its own, so a restore reads one file of a
//! backup without the others, and the copy threads compress side by side.
//! Decoders read every frame of a stream (a gzip file of several members,
//! a zstd file of several frames, an lz4 file of several frames) and
//! report damage as `InvalidData` (gzip as `InvalidInput`, which is what
//! flate2 says) and a stream cut short as `UnexpectedEof`, so that a stored
//! file that does not decode is told from an unreadable disk, and a cut one
//! never reads as a shorter or (a frame's end mark lost) an intact one.

use std::io::{self, Read, Write};
use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};
use thiserror::Error;

mod lz4;

use lz4::Lz4Reader;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Zstd,
    Lz4,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("unknown compression \"{name}\"; the choices are none, gzip, zstd, lz4")]
    Unknown { name: String },
    #[error("compression level {level} is out of range for {codec}: {range}")]
    Level {
        codec: &'static str,
        level: i32,
        range: String,
    },
}

impl Compression {
    pub const ALL: [Compression; 4] = [
        Compression::None,
        Compression::Gzip,
        Compression::Zstd,
        Compression::Lz4,
    ];

    /// The name the SQL interface, the settings and the catalog use.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::Lz4 => "lz4",
        }
    }

    pub fn parse(name: &str) -> Result<Self, CodecError> {
        Self::ALL
            .into_iter()
            .find(|codec| codec.as_str() == name)
            .ok_or_else(|| CodecError::Unknown {
                name: name.to_owned(),
            })
    }

    /// What a stored file's name gets appended.
    pub fn suffix(self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Gzip => ".gz",
            Compression::Zstd => ".zst",
            Compression::Lz4 => ".lz4",
        }
    }

    /// The name a file `path` is stored under.
    pub fn stored_name(self, path: &str) -> String {
        format!("{path}{}", self.suffix())
    }

    /// The levels it takes (a single one for `none` and `lz4`).
    pub fn levels(self) -> RangeInclusive<i32> {
        match self {
            Compression::None => 0..=0,
            Compression::Gzip => 0..=9,
            Compression::Zstd => 1..=19,
            Compression::Lz4 => 1..=1,
        }
    }

    pub fn default_level(self) -> i32 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 6,
            Compression::Zstd => 3,
            Compression::Lz4 => 1,
        }
    }

    /// `level`, or the default when None; an error names the range.
    pub fn check_level(self, level: Option<i32>) -> Result<i32, CodecError> {
        let level = level.unwrap_or_else(|| self.default_level());
        let levels = self.levels();
        if levels.contains(&level) {
            Ok(level)
        } else {
            Err(CodecError::Level {
                codec: self.as_str(),
                level,
                range: format!("{} to {}", levels.start(), levels.end()),
            })
        }
    }

    /// An encoder writing to `inner` at `level` (clamped into range).
    pub fn encoder<W: Write>(self, inner: W, level: i32) -> io::Result<Encoder<W>> {
        let levels = self.levels();
        let level = level.clamp(*levels.start(), *levels.end());
        Ok(match self {
            Compression::None => Encoder::Plain(inner),
            Compression::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                inner,
                flate2::Compression::new(level as u32),
            )),
            Compression::Zstd => Encoder::Zstd(zstd::stream::write::Encoder::new(inner, level)?),
            Compression::Lz4 => Encoder::Lz4(Box::new(lz4_flex::frame::FrameEncoder::new(inner))),
        })
    }

    /// A decoder reading the content back from `inner`.
    pub fn decoder<'r, R: Read + Send + 'r>(
        self,
        inner: R,
    ) -> io::Result<Box<dyn Read + Send + 'r>> {
        Ok(match self {
            Compression::None => Box::new(inner),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(inner)),
            Compression::Zstd => Box::new(ZstdReader(zstd::stream::read::Decoder::new(inner)?)),
            Compression::Lz4 => Box::new(Lz4Reader::new(inner)),
        })
    }
}

/// Content going into a stored file.
pub enum Encoder<W: Write> {
    Plain(W),
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
    Lz4(Box<lz4_flex::frame::FrameEncoder<W>>),
}

impl<W: Write> Encoder<W> {
    /// Writes the end of the stream and returns the writer.
    pub fn finish(self) -> io::Result<W> {
        match self {
            Encoder::Plain(inner) => Ok(inner),
            Encoder::Gzip(encoder) => encoder.finish(),
            Encoder::Zstd(encoder) => encoder.finish(),
            Encoder::Lz4(encoder) => encoder.finish().map_err(io::Error::other),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Plain(inner) => inner.write(buf),
            Encoder::Gzip(encoder) => encoder.write(buf),
            Encoder::Zstd(encoder) => encoder.write(buf),
            Encoder::Lz4(encoder) => encoder.write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Encoder::Plain(inner) => inner.write_all(buf),
            Encoder::Gzip(encoder) => encoder.write_all(buf),
            Encoder::Zstd(encoder) => encoder.write_all(buf),
            Encoder::Lz4(encoder) => encoder.write_all(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Plain(inner) => inner.flush(),
            Encoder::Gzip(encoder) => encoder.flush(),
            Encoder::Zstd(encoder) => encoder.flush(),
            Encoder::Lz4(encoder) => encoder.flush(),
        }
    }
}

/// zstd's decoder, its errors about the data made `InvalidData`.
struct ZstdReader<R: Read>(zstd::stream::read::Decoder<'static, io::BufReader<R>>);

impl<R: Read> Read for ZstdReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf).map_err(|error| {
            // The library reports damage as Other with its own message; an
            // error of the underlying reader keeps its kind.
            if error.kind() == io::ErrorKind::Other
                && error.get_ref().is_none_or(|e| !e.is::<io::Error>())
            {
                io::Error::new(io::ErrorKind::InvalidData, error.to_string())
            } else {
                error
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_suffixes_and_levels() {
        for codec in Compression::ALL {
            assert_eq!(Compression::parse(codec.as_str()), Ok(codec));
            assert!(codec.levels().contains(&codec.default_level()));
        }
        assert_eq!(
            Compression::parse("bzip2").unwrap_err().to_string(),
            "unknown compression \"bzip2\"; the choices are none, gzip, zstd, lz4"
        );
        assert_eq!(Compression::Zstd.stored_name("base/1/2"), "base/1/2.zst");
        assert_eq!(Compression::Zstd.check_level(None), Ok(3));
        assert!(Compression::Zstd.check_level(Some(20)).is_err());
        assert!(Compression::Gzip.check_level(Some(-1)).is_err());
    }
}

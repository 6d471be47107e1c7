//! The CRC-32C and length of a stream, as the catalog records them for
//! every stored file (of the content, before any compression).

use std::io::{self, Read};

const BUFFER_BYTES: usize = 256 * 1024;

/// Reads `reader` to its end; returns (bytes read, CRC-32C of them).
pub fn crc32c_of(mut reader: impl Read) -> io::Result<(u64, u32)> {
    let mut buffer = vec![0u8; BUFFER_BYTES];
    let mut size = 0u64;
    let mut crc = 0u32;
    loop {
        let read = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        crc = crc32c::crc32c_append(crc, &buffer[..read]);
        size += read as u64;
    }
    Ok((size, crc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_one_shot_crc() {
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(
            crc32c_of(&data[..]).unwrap(),
            (data.len() as u64, crc32c::crc32c(&data))
        );
        assert_eq!(crc32c_of(&[][..]).unwrap(), (0, 0));
    }
}

//! The long page header that begins every WAL segment (PostgreSQL's
//! `XLogLongPageHeaderData`, the same from 15 to 18): the page header, then
//! the system identifier, the segment size and the block size. Read in the
//! byte order of this host, which wrote it.
//!
//! ```text
//! offset  0  uint16 xlp_magic     (changes with every major version)
//!         2  uint16 xlp_info      (XLP_LONG_HEADER = 0x0002)
//!         4  uint32 xlp_tli
//!         8  uint64 xlp_pageaddr  (the segment's start LSN)
//!        16  uint32 xlp_rem_len, then padding to 24
//!        24  uint64 xlp_sysid
//!        32  uint32 xlp_seg_size
//!        36  uint32 xlp_xlog_blcksz
//! ```

use std::io::{self, Read, Seek, SeekFrom};

use super::name::valid_segment_size;

const LONG_HEADER_BYTES: usize = 40;
const XLP_LONG_HEADER: u16 = 0x0002;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LongHeader {
    pub page_address: u64,
    pub system_identifier: u64,
    pub segment_size: u32,
    pub block_size: u32,
}

/// The header at the start of `file`: Ok(Err(why)) when the bytes are not
/// a segment's first page.
pub fn read_long_header(file: &mut (impl Read + Seek)) -> io::Result<Result<LongHeader, String>> {
    file.seek(SeekFrom::Start(0))?;
    let mut bytes = [0u8; LONG_HEADER_BYTES];
    let mut filled = 0;
    while filled < bytes.len() {
        match file.read(&mut bytes[filled..])? {
            0 => break,
            read => filled += read,
        }
    }
    if filled < bytes.len() {
        return Ok(Err(format!(
            "it is {filled} bytes long, shorter than a page header"
        )));
    }
    Ok(parse(&bytes))
}

fn parse(bytes: &[u8; LONG_HEADER_BYTES]) -> Result<LongHeader, String> {
    let u16_at = |at: usize| u16::from_ne_bytes([bytes[at], bytes[at + 1]]);
    let u32_at = |at: usize| u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap_or([0; 4]));
    let u64_at = |at: usize| u64::from_ne_bytes(bytes[at..at + 8].try_into().unwrap_or([0; 8]));
    if u16_at(2) & XLP_LONG_HEADER == 0 {
        return Err("its first page has no long header".to_owned());
    }
    let header = LongHeader {
        page_address: u64_at(8),
        system_identifier: u64_at(24),
        segment_size: u32_at(32),
        block_size: u32_at(36),
    };
    if !valid_segment_size(u64::from(header.segment_size)) {
        return Err(format!(
            "its header gives a segment size of {} bytes",
            header.segment_size
        ));
    }
    if !header.block_size.is_power_of_two() || !(1024..=32768).contains(&header.block_size) {
        return Err(format!(
            "its header gives a WAL block size of {} bytes",
            header.block_size
        ));
    }
    Ok(header)
}

#[cfg(test)]
pub(crate) fn long_header_bytes(header: &LongHeader) -> [u8; LONG_HEADER_BYTES] {
    let mut bytes = [0u8; LONG_HEADER_BYTES];
    bytes[0..2].copy_from_slice(&0xD110u16.to_ne_bytes());
    bytes[2..4].copy_from_slice(&XLP_LONG_HEADER.to_ne_bytes());
    bytes[4..8].copy_from_slice(&1u32.to_ne_bytes());
    bytes[8..16].copy_from_slice(&header.page_address.to_ne_bytes());
    bytes[24..32].copy_from_slice(&header.system_identifier.to_ne_bytes());
    bytes[32..36].copy_from_slice(&header.segment_size.to_ne_bytes());
    bytes[36..40].copy_from_slice(&header.block_size.to_ne_bytes());
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_a_long_header_holds_and_refuses_other_bytes() {
        let header = LongHeader {
            page_address: 0x3_0000_0000,
            system_identifier: 7_123_456_789,
            segment_size: 16 << 20,
            block_size: 8192,
        };
        let mut page = long_header_bytes(&header).to_vec();
        page.resize(8192, 0);
        let mut cursor = io::Cursor::new(page.clone());
        assert_eq!(read_long_header(&mut cursor).unwrap(), Ok(header));

        let mut short = io::Cursor::new(page[..20].to_vec());
        assert!(read_long_header(&mut short).unwrap().is_err());
        let mut no_long = page.clone();
        no_long[2..4].copy_from_slice(&0u16.to_ne_bytes());
        assert!(read_long_header(&mut io::Cursor::new(no_long))
            .unwrap()
            .is_err());
        let mut bad_size = page;
        bad_size[32..36].copy_from_slice(&12345u32.to_ne_bytes());
        assert!(read_long_header(&mut io::Cursor::new(bad_size))
            .unwrap()
            .is_err());
    }
}

//! The proxy-wasm header-map wire format, read and written with checked bounds: a
//! little-endian `u32` count, then `count` pairs of `u32` sizes (name, value), then each name
//! and value followed by a NUL byte. The SDK's reader indexes and unwraps (and refuses
//! non-UTF-8 names with a panic); this one returns `None` on anything unexpected.

/// Parses a serialized header map into byte pairs; `None` when the bytes are not a valid map.
pub fn parse(bytes: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let count = usize::try_from(read_u32(bytes, 0)?).ok()?;
    let sizes_end = count.checked_mul(8)?.checked_add(4)?;
    if sizes_end > bytes.len() {
        return None;
    }
    let mut pairs = Vec::with_capacity(count);
    let mut at = sizes_end;
    for index in 0..count {
        let entry = 4 + index * 8;
        let name_len = usize::try_from(read_u32(bytes, entry)?).ok()?;
        let value_len = usize::try_from(read_u32(bytes, entry + 4)?).ok()?;
        let (name, next) = take(bytes, at, name_len)?;
        let (value, next) = take(bytes, next, value_len)?;
        at = next;
        pairs.push((name.to_vec(), value.to_vec()));
    }
    Some(pairs)
}

/// Serializes pairs into the header-map wire format.
pub fn serialize(pairs: &[(&str, &str)]) -> Vec<u8> {
    let data: usize = pairs.iter().map(|(n, v)| n.len() + v.len() + 2).sum();
    let mut out = Vec::with_capacity(4 + pairs.len() * 8 + data);
    out.extend_from_slice(&len_u32(pairs.len()).to_le_bytes());
    for (name, value) in pairs {
        out.extend_from_slice(&len_u32(name.len()).to_le_bytes());
        out.extend_from_slice(&len_u32(value.len()).to_le_bytes());
    }
    for (name, value) in pairs {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(value.as_bytes());
        out.push(0);
    }
    out
}

fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let raw: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_le_bytes(raw))
}

/// `len` bytes at `at`, which must be followed by a NUL; returns them and the next offset.
fn take(bytes: &[u8], at: usize, len: usize) -> Option<(&[u8], usize)> {
    let end = at.checked_add(len)?;
    let data = bytes.get(at..end)?;
    (bytes.get(end) == Some(&0)).then_some((data, end + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let bytes = serialize(&[(":path", "/score"), ("user-agent", ""), ("a", "b")]);
        let pairs = parse(&bytes).unwrap();
        assert_eq!(
            pairs,
            vec![
                (b":path".to_vec(), b"/score".to_vec()),
                (b"user-agent".to_vec(), b"".to_vec()),
                (b"a".to_vec(), b"b".to_vec()),
            ]
        );
        assert_eq!(parse(&[]), Some(vec![]));
    }

    #[test]
    fn keeps_non_utf8_bytes() {
        let mut bytes = serialize(&[("user-agent", "x")]);
        let at = bytes.len() - 2;
        bytes[at] = 0xa1; // the value becomes the obs-text byte 0xA1
        assert_eq!(
            parse(&bytes).unwrap(),
            vec![(b"user-agent".to_vec(), vec![0xa1])]
        );
    }

    #[test]
    fn refuses_every_truncation_and_lie() {
        let bytes = serialize(&[(":path", "/score"), ("x", "y")]);
        for cut in 1..bytes.len() {
            assert_eq!(parse(&bytes[..cut]), None, "cut at {cut}");
        }
        // A count far larger than the data must not allocate or read out of bounds.
        let mut huge = bytes.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(parse(&huge), None);
        // A size that points past the end.
        let mut long = bytes.clone();
        long[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(parse(&long), None);
        // A missing NUL terminator.
        let mut no_nul = bytes;
        let at = 4 + 2 * 8 + ":path".len();
        no_nul[at] = b'!';
        assert_eq!(parse(&no_nul), None);
    }
}

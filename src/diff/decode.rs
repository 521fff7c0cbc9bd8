//! Undoing `Content-Encoding` before bodies are compared or sampled: two servers that send the
//! same document, one gzipped and one not, give the same answer.
//!
//! Decoding is bounded: at most [`DECODED_LIMIT`] bytes come out of any body, however small it
//! was on the wire, so a decompression bomb costs the limit and is marked truncated. A body whose
//! encoding is unknown or does not decode is an error of its own, which the comparison reports
//! as such (never as "invalid JSON").

use std::borrow::Cow;
use std::io::Read;

use http::HeaderMap;

/// Most bytes a body decodes to; past it the body is truncated, like a capture over its limit.
pub const DECODED_LIMIT: usize = 1 << 20;

/// Most encodings stacked on one body (`Content-Encoding: gzip, br` is two).
const MAX_LAYERS: usize = 4;

/// zstd frames may ask for a window up to 2^27 bytes by default; HTTP's zstd content coding
/// limits it to 8 MiB (RFC 9659), and so does this decoder.
const ZSTD_WINDOW_LOG_MAX: u32 = 23;

/// A body with its content codings removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded<'a> {
    pub bytes: Cow<'a, [u8]>,
    /// The body is longer than `bytes`: cut at the capture limit, or decoding past
    /// [`DECODED_LIMIT`].
    pub truncated: bool,
    /// The codings removed, as the header lists them (`gzip`, `br`); empty for identity.
    pub codings: Vec<String>,
}

/// Why a body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown content-encoding `{0}`")]
    Unknown(String),
    #[error("{coding} body does not decode: {reason}")]
    Broken { coding: String, reason: String },
    #[error("{0} content-encodings stacked, at most {MAX_LAYERS} are decoded")]
    TooManyLayers(usize),
}

/// The codings `headers` declare, in the order they were applied; `identity` left out.
pub fn codings(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(http::header::CONTENT_ENCODING)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|coding| coding.trim().to_ascii_lowercase())
        .filter(|coding| !coding.is_empty() && coding != "identity")
        .collect()
}

/// `body` (at most a capture, `truncated` when it was cut) with the codings of `headers` undone,
/// at most `limit` bytes of it. An empty body stays empty whatever its headers say (a `HEAD`
/// answer, a 304).
pub fn decode<'a>(
    headers: &HeaderMap,
    body: &'a [u8],
    truncated: bool,
    limit: usize,
) -> Result<Decoded<'a>, DecodeError> {
    let codings = codings(headers);
    if codings.is_empty() || body.is_empty() {
        return Ok(Decoded {
            bytes: Cow::Borrowed(body),
            truncated,
            codings: Vec::new(),
        });
    }
    if codings.len() > MAX_LAYERS {
        return Err(DecodeError::TooManyLayers(codings.len()));
    }
    let mut bytes = Cow::Borrowed(body);
    let mut truncated = truncated;
    // The last coding listed was applied last: undo it first.
    for coding in codings.iter().rev() {
        let (decoded, cut) = decode_one(coding, &bytes, truncated, limit)?;
        bytes = Cow::Owned(decoded);
        truncated = cut;
    }
    Ok(Decoded {
        bytes,
        truncated,
        codings,
    })
}

/// One coding undone: the output (at most `limit` bytes) and whether it is incomplete.
fn decode_one(
    coding: &str,
    input: &[u8],
    input_truncated: bool,
    limit: usize,
) -> Result<(Vec<u8>, bool), DecodeError> {
    let broken = |reason: String| DecodeError::Broken {
        coding: coding.to_owned(),
        reason,
    };
    let reader: Box<dyn Read + '_> = match coding {
        "gzip" | "x-gzip" => Box::new(flate2::read::MultiGzDecoder::new(input)),
        // HTTP's `deflate` is zlib-wrapped (RFC 9110), but some servers send raw deflate.
        "deflate" if is_zlib(input) => Box::new(flate2::read::ZlibDecoder::new(input)),
        "deflate" => Box::new(flate2::read::DeflateDecoder::new(input)),
        "br" => Box::new(brotli::Decompressor::new(input, 8 << 10)),
        "zstd" => {
            let mut decoder = zstd::stream::read::Decoder::with_buffer(input)
                .map_err(|error| broken(error.to_string()))?;
            decoder
                .window_log_max(ZSTD_WINDOW_LOG_MAX)
                .map_err(|error| broken(error.to_string()))?;
            Box::new(decoder)
        }
        other => return Err(DecodeError::Unknown(other.to_owned())),
    };
    let mut output = Vec::new();
    // One byte past the limit tells a body that ends there from one that goes on.
    let read = reader.take(limit as u64 + 1).read_to_end(&mut output);
    match read {
        Ok(_) if output.len() > limit => {
            output.truncate(limit);
            Ok((output, true))
        }
        Ok(_) => Ok((output, input_truncated)),
        // Cut short on the wire: what decoded so far is the start of the body.
        Err(_) if input_truncated => Ok((output, true)),
        Err(error) => Err(broken(error.to_string())),
    }
}

/// Whether `input` starts with a zlib header (RFC 1950): deflate method, a check that divides.
fn is_zlib(input: &[u8]) -> bool {
    match input {
        [cmf, flg, ..] => cmf & 0x0f == 8 && (u16::from(*cmf) << 8 | u16::from(*flg)) % 31 == 0,
        _ => false,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    pub(crate) fn brotli(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut writer = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
            writer.write_all(data).unwrap();
        }
        out
    }

    fn headers(encoding: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("content-encoding", encoding.parse().unwrap());
        headers
    }

    fn decoded(encoding: &str, body: &[u8]) -> Result<(Vec<u8>, bool), DecodeError> {
        decode(&headers(encoding), body, false, DECODED_LIMIT)
            .map(|d| (d.bytes.into_owned(), d.truncated))
    }

    #[test]
    fn every_coding_http_uses_decodes() {
        let text = br#"{"id":1,"total":10.5}"#.repeat(50);
        let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        zlib.write_all(&text).unwrap();
        let zlib = zlib.finish().unwrap();
        let mut raw = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        raw.write_all(&text).unwrap();
        let raw = raw.finish().unwrap();
        let zstd = zstd::encode_all(&text[..], 3).unwrap();
        for (coding, body) in [
            ("gzip", gzip(&text)),
            ("x-gzip", gzip(&text)),
            ("deflate", zlib),
            ("deflate", raw),
            ("br", brotli(&text)),
            ("zstd", zstd),
            ("identity", text.clone()),
            ("GZIP", gzip(&text)),
        ] {
            assert_eq!(
                decoded(coding, &body),
                Ok((text.clone(), false)),
                "{coding}"
            );
        }
        // Stacked codings are undone last first.
        let both = brotli(&gzip(&text));
        assert_eq!(decoded("gzip, br", &both), Ok((text.clone(), false)));
        let none = decode(&HeaderMap::new(), &text, false, DECODED_LIMIT).unwrap();
        assert!(matches!(none.bytes, Cow::Borrowed(_)), "nothing copied");
    }

    #[test]
    fn unknown_and_broken_codings_are_errors_of_their_own() {
        assert_eq!(
            decoded("compress", b"\x1f\x9d..."),
            Err(DecodeError::Unknown("compress".into()))
        );
        let error = decoded("gzip", b"plainly not gzip").unwrap_err();
        assert!(matches!(&error, DecodeError::Broken { coding, .. } if coding == "gzip"));
        assert!(
            error.to_string().starts_with("gzip body does not decode"),
            "{error}"
        );
        assert!(decoded("br", b"\xff\xff\xff\xff not brotli").is_err());
        assert_eq!(
            decoded("gzip,gzip,gzip,gzip,gzip", b"x"),
            Err(DecodeError::TooManyLayers(5))
        );
        // A HEAD answer declares its coding and has no body.
        assert_eq!(decoded("gzip", b""), Ok((Vec::new(), false)));
    }

    #[test]
    fn a_bomb_stops_at_the_limit_and_is_marked_truncated() {
        let zeros = vec![0u8; 8 << 20];
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(&zeros).unwrap();
        let bomb = encoder.finish().unwrap();
        assert!(bomb.len() < 16 << 10, "{} bytes on the wire", bomb.len());
        let out = decode(&headers("gzip"), &bomb, false, DECODED_LIMIT).unwrap();
        assert_eq!(out.bytes.len(), DECODED_LIMIT);
        assert!(out.truncated);
        let zstd_bomb = zstd::encode_all(&zeros[..], 3).unwrap();
        let out = decode(&headers("zstd"), &zstd_bomb, false, DECODED_LIMIT).unwrap();
        assert_eq!((out.bytes.len(), out.truncated), (DECODED_LIMIT, true));
    }

    #[test]
    fn a_body_cut_at_the_capture_limit_decodes_as_far_as_it_goes() {
        let text: Vec<u8> = (0..20_000u32)
            .flat_map(|n| format!("line {n}\n").into_bytes())
            .collect();
        let whole = gzip(&text);
        let cut = &whole[..whole.len() / 2];
        let out = decode(&headers("gzip"), cut, true, DECODED_LIMIT).unwrap();
        assert!(out.truncated);
        assert!(!out.bytes.is_empty() && text.starts_with(&out.bytes));
        // The same cut on a body that was not truncated is broken.
        assert!(decode(&headers("gzip"), cut, false, DECODED_LIMIT).is_err());
    }
}

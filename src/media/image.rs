//! An image's format and dimensions from its header, and the `data:` URL it
//! is sent to the model as.
//!
//! Only the header is read (the `imagesize` crate), never the pixels: a
//! photo is passed on to the model as it came, so decoding it here would
//! cost memory and time for nothing. What is checked is what the bot must
//! know before it spends a model call: the bytes are one of the four formats
//! vision models take (JPEG, PNG, GIF, WebP), the header is readable, and
//! the picture is not past a pixel cap (a decompression bomb the provider
//! would refuse anyway).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// The image formats the bot passes on to a vision model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageFormat {
    /// JPEG (what Telegram sends every compressed photo as).
    Jpeg,
    /// PNG.
    Png,
    /// GIF (the first frame is what models look at).
    Gif,
    /// WebP (Telegram's stickers, among others).
    Webp,
}

impl ImageFormat {
    /// The MIME type, as it goes into a `data:` URL.
    pub fn mime(&self) -> &'static str {
        match self {
            Self::Jpeg => "image/jpeg",
            Self::Png => "image/png",
            Self::Gif => "image/gif",
            Self::Webp => "image/webp",
        }
    }
}

/// What [`inspect_image`] read from a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageInfo {
    /// The format, from the magic bytes.
    pub format: ImageFormat,
    /// Width in pixels (never zero).
    pub width: u32,
    /// Height in pixels (never zero).
    pub height: u32,
}

/// Why bytes are not an image the bot can pass on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// No bytes at all.
    #[error("the image is empty")]
    Empty,
    /// The magic bytes are none of JPEG, PNG, GIF or WebP.
    #[error("not a JPEG, PNG, GIF or WebP image")]
    NotAnImage,
    /// The magic bytes say image, but the header cannot be read or gives a
    /// zero dimension.
    #[error("the image header is unreadable")]
    Corrupt,
    /// More pixels than the caller allows.
    #[error("the image is too large ({width}x{height})")]
    TooLarge {
        /// Width in pixels, as the header says.
        width: u64,
        /// Height in pixels, as the header says.
        height: u64,
    },
}

impl ImageError {
    /// A short fixed name for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::NotAnImage => "not_an_image",
            Self::Corrupt => "corrupt",
            Self::TooLarge { .. } => "too_large",
        }
    }
}

/// Reads the format and dimensions of an image from its header, refusing
/// one of more than `max_pixels` pixels (width times height).
///
/// Reads only as far into `bytes` as the header goes; never decodes pixels.
pub fn inspect_image(bytes: &[u8], max_pixels: u64) -> Result<ImageInfo, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    // Too short to carry any magic imagesize knows, or a magic it does not
    // know (the other formats are compiled out): not an image either way.
    let format = match imagesize::image_type(bytes) {
        Ok(imagesize::ImageType::Jpeg) => ImageFormat::Jpeg,
        Ok(imagesize::ImageType::Png) => ImageFormat::Png,
        Ok(imagesize::ImageType::Gif) => ImageFormat::Gif,
        Ok(imagesize::ImageType::Webp) => ImageFormat::Webp,
        Ok(_) | Err(_) => return Err(ImageError::NotAnImage),
    };
    let size = imagesize::blob_size(bytes).map_err(|_| ImageError::Corrupt)?;
    let (Ok(width), Ok(height)) = (u32::try_from(size.width), u32::try_from(size.height)) else {
        return Err(ImageError::TooLarge {
            width: u64::try_from(size.width).unwrap_or(u64::MAX),
            height: u64::try_from(size.height).unwrap_or(u64::MAX),
        });
    };
    if width == 0 || height == 0 {
        return Err(ImageError::Corrupt);
    }
    if u64::from(width) * u64::from(height) > max_pixels {
        return Err(ImageError::TooLarge {
            width: width.into(),
            height: height.into(),
        });
    }
    Ok(ImageInfo {
        format,
        width,
        height,
    })
}

/// `data:<mime>;base64,<bytes in standard base64>`: how an image goes into
/// an OpenAI-compatible request. The string is allocated once, at its exact
/// final length.
pub fn data_url(mime: &str, bytes: &[u8]) -> String {
    const PREFIX: &str = "data:";
    const MIDDLE: &str = ";base64,";
    // Padded standard base64: 4 characters per started 3 bytes.
    let encoded = bytes.len().div_ceil(3) * 4;
    let mut url = String::with_capacity(PREFIX.len() + mime.len() + MIDDLE.len() + encoded);
    url.push_str(PREFIX);
    url.push_str(mime);
    url.push_str(MIDDLE);
    STANDARD.encode_string(bytes, &mut url);
    url
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::time::Instant;

    const MAX: u64 = 50_000_000;

    /// A PNG signature and IHDR chunk for a `width` x `height` image (the
    /// CRC is not checked by a header reader).
    fn png(width: u32, height: u32) -> Vec<u8> {
        let mut b = vec![0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
        b.extend_from_slice(&13u32.to_be_bytes());
        b.extend_from_slice(b"IHDR");
        b.extend_from_slice(&width.to_be_bytes());
        b.extend_from_slice(&height.to_be_bytes());
        b.extend_from_slice(&[8, 6, 0, 0, 0, 0, 0, 0, 0]);
        b
    }

    /// A minimal baseline JPEG header: SOI, an APP0, then SOF0.
    fn jpeg(width: u16, height: u16) -> Vec<u8> {
        let mut b = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10];
        b.extend_from_slice(b"JFIF\0");
        b.extend_from_slice(&[1, 1, 0, 0, 1, 0, 1, 0, 0]);
        b.extend_from_slice(&[0xFF, 0xC0, 0x00, 0x11, 0x08]);
        b.extend_from_slice(&height.to_be_bytes());
        b.extend_from_slice(&width.to_be_bytes());
        b.extend_from_slice(&[3, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1]);
        b.extend_from_slice(&[0xFF, 0xD9]);
        b
    }

    fn gif(width: u16, height: u16) -> Vec<u8> {
        let mut b = b"GIF89a".to_vec();
        b.extend_from_slice(&width.to_le_bytes());
        b.extend_from_slice(&height.to_le_bytes());
        b.extend_from_slice(&[0, 0, 0, 0x3B]);
        b
    }

    /// A lossless (VP8L) WebP header.
    fn webp(width: u32, height: u32) -> Vec<u8> {
        let bits = (width - 1) | ((height - 1) << 14);
        let mut b = b"RIFF".to_vec();
        b.extend_from_slice(&30u32.to_le_bytes());
        b.extend_from_slice(b"WEBPVP8L");
        b.extend_from_slice(&10u32.to_le_bytes());
        b.push(0x2F);
        b.extend_from_slice(&bits.to_le_bytes());
        b.extend_from_slice(&[0; 8]);
        b
    }

    #[test]
    fn reads_the_four_formats() {
        let cases = [
            (png(640, 480), ImageFormat::Png, 640, 480, "image/png"),
            (jpeg(1280, 720), ImageFormat::Jpeg, 1280, 720, "image/jpeg"),
            (gif(32, 16), ImageFormat::Gif, 32, 16, "image/gif"),
            (webp(100, 50), ImageFormat::Webp, 100, 50, "image/webp"),
        ];
        for (bytes, format, width, height, mime) in cases {
            let info = inspect_image(&bytes, MAX).unwrap();
            assert_eq!(
                info,
                ImageInfo {
                    format,
                    width,
                    height
                }
            );
            assert_eq!(info.format.mime(), mime);
        }
    }

    #[test]
    fn empty_is_empty() {
        assert_eq!(inspect_image(&[], MAX), Err(ImageError::Empty));
        assert_eq!(ImageError::Empty.label(), "empty");
    }

    #[test]
    fn other_magic_is_not_an_image() {
        for bytes in [
            &b"%PDF-1.4\n%\xE2\xE3\xCF\xD3\n1 0 obj"[..],
            b"PK\x03\x04\x14\x00\x00\x00\x08\x00",
            b"OggS\x00\x02\x00\x00\x00\x00\x00\x00\x00\x00",
            b"hello",
            b"BM\x36\x00\x0c\x00\x00\x00\x00\x00\x36\x00\x00\x00", // BMP: compiled out
        ] {
            assert_eq!(inspect_image(bytes, MAX), Err(ImageError::NotAnImage));
        }
    }

    #[test]
    fn truncated_or_zero_sized_header_is_corrupt() {
        let mut cut = jpeg(10, 10);
        cut.truncate(12);
        assert_eq!(inspect_image(&cut, MAX), Err(ImageError::Corrupt));
        assert_eq!(inspect_image(&png(0, 10), MAX), Err(ImageError::Corrupt));
        assert_eq!(inspect_image(&jpeg(10, 0), MAX), Err(ImageError::Corrupt));
        assert_eq!(
            inspect_image(&png(5, 5)[..20], MAX),
            Err(ImageError::Corrupt)
        );
    }

    #[test]
    fn past_the_pixel_cap_is_too_large() {
        assert_eq!(
            inspect_image(&png(10_000, 10_000), MAX),
            Err(ImageError::TooLarge {
                width: 10_000,
                height: 10_000
            })
        );
        assert!(inspect_image(&png(5_000, 10_000), MAX).is_ok());
        assert!(inspect_image(&png(u32::MAX, u32::MAX), u64::MAX).is_ok());
    }

    #[test]
    fn data_url_is_exact() {
        assert_eq!(data_url("image/png", b""), "data:image/png;base64,");
        assert_eq!(data_url("image/png", b"a"), "data:image/png;base64,YQ==");
        assert_eq!(
            data_url("image/jpeg", b"hello!"),
            "data:image/jpeg;base64,aGVsbG8h"
        );
        for n in 0..10 {
            let url = data_url("image/gif", &vec![0xAB; n]);
            assert_eq!(url.len(), url.capacity(), "{n} bytes");
        }
    }

    /// Not an assertion: how long a 1 MB photo takes to become a URL
    /// (`cargo test --lib media::image -- --nocapture`).
    #[test]
    fn data_url_timing() {
        let bytes: Vec<u8> = (0..1_000_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let started = Instant::now();
        let url = data_url("image/jpeg", &bytes);
        let took = started.elapsed();
        assert_eq!(url.len(), url.capacity());
        println!("data_url of 1 MB: {took:?} ({} chars)", url.len());
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = inspect_image(&bytes, MAX);
            let url = data_url("image/png", &bytes);
            proptest::prop_assert_eq!(url.len(), url.capacity());
        }

        #[test]
        fn image_magic_then_random_never_panics(
            magic in proptest::sample::select(vec![
                &b"\xFF\xD8\xFF"[..], b"\x89PNG\r\n\x1a\n", b"GIF89a", b"RIFF\0\0\0\0WEBPVP8 ",
                b"RIFF\0\0\0\0WEBPVP8L", b"RIFF\0\0\0\0WEBPVP8X",
            ]),
            tail in proptest::collection::vec(proptest::num::u8::ANY, 0..256),
        ) {
            let mut bytes = magic.to_vec();
            bytes.extend_from_slice(&tail);
            let _ = inspect_image(&bytes, MAX);
        }
    }
}

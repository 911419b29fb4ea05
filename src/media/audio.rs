//! A cheap sanity check of a voice note or audio file before it is sent for
//! transcription.
//!
//! Nothing is decoded: the transcription provider decides what it can
//! read. This only saves a paid call (and gives the user a clear reply) when
//! the bytes are plainly not audio: empty or a few bytes long, or a file
//! whose magic bytes say it is something else (a photo, a PDF, an archive
//! sent as a voice note). Unknown magic is accepted.

/// Fewer bytes than this cannot hold a frame of any audio container.
pub const MIN_AUDIO_BYTES: usize = 32;

/// Why bytes are not worth sending for transcription.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AudioError {
    /// No bytes, or too few to hold any audio.
    #[error("the audio is empty")]
    Empty,
    /// The magic bytes say this is some other kind of file.
    #[error("not an audio file ({detected})")]
    NotAudio {
        /// What the magic bytes say it is (`"png"`, `"pdf"`, `"zip"`, …).
        detected: &'static str,
    },
}

impl AudioError {
    /// A short fixed name for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::NotAudio { .. } => "not_audio",
        }
    }
}

/// Magic bytes of files that are clearly not audio, with a name for each.
const NOT_AUDIO: &[(&[u8], &str)] = &[
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xFF\xD8\xFF", "jpeg"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"%PDF-", "pdf"),
    (b"PK\x03\x04", "zip"),
    (b"PK\x05\x06", "zip"),
    (b"Rar!\x1a\x07", "rar"),
    (b"7z\xBC\xAF\x27\x1C", "7z"),
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\xFD7zXZ\x00", "xz"),
    (b"\x28\xB5\x2F\xFD", "zstd"),
    (b"\x7fELF", "elf"),
    (b"MZ", "exe"),
    (b"\xD0\xCF\x11\xE0\xA1\xB1\x1A\xE1", "ole"),
    (b"BM", "bmp"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"<!DOCTYPE", "html"),
    (b"<html", "html"),
    (b"<?xml", "xml"),
    (b"{\\rtf", "rtf"),
    (b"SQLite format 3\x00", "sqlite"),
];

/// `ftyp` brands of ISO media files that are still pictures, not sound.
const IMAGE_BRANDS: &[&[u8; 4]] = &[b"heic", b"heix", b"mif1", b"msf1", b"avif", b"avis"];

/// Accepts bytes that may be audio: known audio containers (Ogg, MP3 with
/// ID3 or a frame sync, WAV, FLAC, MP4/M4A, WebM/Matroska) and anything of
/// unknown magic; refuses empty input and files that are clearly something
/// else.
pub fn check_audio(bytes: &[u8]) -> Result<(), AudioError> {
    if bytes.len() < MIN_AUDIO_BYTES {
        return Err(AudioError::Empty);
    }
    // RIFF is WAV's container, but also WebP's and AVI's.
    if let Some(form) = bytes.strip_prefix(b"RIFF").and_then(|rest| rest.get(4..8)) {
        return match form {
            b"WEBP" => Err(AudioError::NotAudio { detected: "webp" }),
            b"AVI " => Err(AudioError::NotAudio { detected: "avi" }),
            _ => Ok(()),
        };
    }
    // ISO base media (`....ftyp<brand>`): M4A, MP4, 3GP, but also HEIC/AVIF.
    if bytes.get(4..8) == Some(b"ftyp")
        && let Some(brand) = bytes.get(8..12)
        && IMAGE_BRANDS.iter().any(|b| b.as_slice() == brand)
    {
        return Err(AudioError::NotAudio { detected: "heif" });
    }
    match NOT_AUDIO.iter().find(|(magic, _)| bytes.starts_with(magic)) {
        Some(&(_, detected)) => Err(AudioError::NotAudio { detected }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn padded(magic: &[u8]) -> Vec<u8> {
        let mut b = magic.to_vec();
        b.resize(magic.len().max(MIN_AUDIO_BYTES) + 64, 0x55);
        b
    }

    #[test]
    fn empty_and_tiny_are_empty() {
        assert_eq!(check_audio(&[]), Err(AudioError::Empty));
        assert_eq!(check_audio(b"OggS\0\x02"), Err(AudioError::Empty));
        assert_eq!(
            check_audio(&[0; MIN_AUDIO_BYTES - 1]),
            Err(AudioError::Empty)
        );
        assert_eq!(AudioError::Empty.label(), "empty");
    }

    #[test]
    fn audio_containers_pass() {
        for magic in [
            &b"OggS\x00\x02"[..],
            b"ID3\x04\x00",
            b"\xFF\xFB\x90\x64",
            b"\xFF\xF1\x50\x80", // AAC ADTS
            b"RIFF\x24\x08\x00\x00WAVEfmt ",
            b"fLaC\x00\x00\x00\x22",
            b"\x00\x00\x00\x20ftypM4A \x00\x00\x00\x00",
            b"\x00\x00\x00\x18ftypmp42",
            b"\x1A\x45\xDF\xA3\x9F\x42\x86\x81",
            b"#!AMR\n",
        ] {
            assert_eq!(check_audio(&padded(magic)), Ok(()), "{magic:?}");
        }
    }

    #[test]
    fn unknown_magic_passes() {
        assert_eq!(check_audio(&padded(b"\x00\x01\x02\x03")), Ok(()));
        assert_eq!(check_audio(&padded(b"just some text")), Ok(()));
    }

    #[test]
    fn other_files_are_not_audio() {
        for (magic, detected) in [
            (&b"\x89PNG\r\n\x1a\n"[..], "png"),
            (b"\xFF\xD8\xFF\xE0", "jpeg"),
            (b"%PDF-1.7", "pdf"),
            (b"PK\x03\x04\x14\x00", "zip"),
            (b"RIFF\x24\x08\x00\x00WEBPVP8 ", "webp"),
            (b"\x00\x00\x00\x1cftypheic", "heif"),
            (b"GIF89a", "gif"),
        ] {
            let err = check_audio(&padded(magic)).unwrap_err();
            assert_eq!(err, AudioError::NotAudio { detected }, "{magic:?}");
            assert_eq!(err.label(), "not_audio");
        }
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = check_audio(&bytes);
        }
    }
}

//! Writing the files a run produces without ever leaving a half-written one under its name: each
//! is written to a temporary file beside it (same extension, so format-sniffing writers work),
//! then renamed over the target.

use std::fmt::Display;
use std::path::{Path, PathBuf};

fn temporary(path: &Path) -> PathBuf {
    match path.extension().and_then(|e| e.to_str()) {
        Some(ext) => path.with_extension(format!("tmp.{ext}")),
        None => path.with_extension("tmp"),
    }
}

/// Writes `path` through `write`, which gets the temporary path; errors name `path`.
pub fn replace_with<E: Display>(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), String> {
    let tmp = temporary(path);
    let err = |e: &dyn Display| format!("{}: {e}", path.display());
    if let Err(e) = write(&tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(&e));
    }
    std::fs::rename(&tmp, path).map_err(|e| err(&e))
}

/// Writes `bytes` to `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    replace_with(path, |tmp| std::fs::write(tmp, bytes))
}

/// An 8-bit PNG (`colour` grey or RGB) of `width x height` pixels.
pub fn write_png(
    path: &Path,
    width: usize,
    height: usize,
    colour: png::ColorType,
    pixels: &[u8],
) -> Result<(), String> {
    replace_with(path, |tmp| -> Result<(), Box<dyn std::error::Error>> {
        let file = std::fs::File::create(tmp)?;
        let mut enc = png::Encoder::new(std::io::BufWriter::new(file), width as u32, height as u32);
        enc.set_color(colour);
        enc.set_depth(png::BitDepth::Eight);
        let mut wr = enc.write_header()?;
        wr.write_image_data(pixels)?;
        wr.finish()?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary() {
        let dir = std::env::temp_dir().join(format!("a3d-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out.json");
        write_atomic(&path, b"first").unwrap();
        let e = replace_with(&path, |tmp| {
            std::fs::write(tmp, b"half")?;
            Err(std::io::Error::other("disk full"))
        })
        .unwrap_err();
        assert!(e.contains("out.json") && e.contains("disk full"), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        assert!(!temporary(&path).exists());
        write_atomic(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        assert_eq!(temporary(&path), dir.join("out.tmp.json"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! One DeepLesion slice: a 16-bit grey PNG whose values are HU + 32768.

use crate::{Error, Limits, Result};
use std::path::Path;

/// The offset DeepLesion adds to HU to store them as unsigned 16-bit values.
pub const HU_OFFSET: f32 = 32768.0;

/// One slice in HU, `height * width` values, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct HuSlice {
    /// Columns.
    pub width: usize,
    /// Rows.
    pub height: usize,
    /// HU values.
    pub hu: Vec<f32>,
}

/// Reads a 16-bit grey PNG as HU (`value - 32768`). The header's size is checked against `limits`
/// before the pixels are allocated; an 8-bit, colour or palette PNG is refused (DeepLesion's
/// slices are 16-bit grey: anything else would give wrong HU silently).
pub fn read_hu_png(path: &Path, limits: &Limits) -> Result<HuSlice> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    read_hu_png_from(path, std::io::BufReader::new(file), limits)
}

/// [`read_hu_png`] from any reader (`path` names it in errors).
pub fn read_hu_png_from(
    path: &Path,
    input: impl std::io::BufRead + std::io::Seek,
    limits: &Limits,
) -> Result<HuSlice> {
    let mut decoder = png::Decoder::new_with_limits(
        input,
        png::Limits {
            // Chunk data beyond the pixels (text, ICC profiles) is capped too.
            bytes: (limits.max_voxels as usize)
                .saturating_mul(2)
                .min(isize::MAX as usize),
        },
    );
    // 16-bit samples as big-endian bytes, no expansion to 8 bits.
    decoder.set_transformations(png::Transformations::IDENTITY);
    let bad = |e: png::DecodingError| Error::invalid(path, format!("not a readable PNG: {e}"));
    let mut reader = decoder.read_info().map_err(bad)?;
    let info = reader.info();
    let (width, height) = (info.width, info.height);
    limits.check(path, width as u64, height as u64, 1)?;
    if info.color_type != png::ColorType::Grayscale || info.bit_depth != png::BitDepth::Sixteen {
        return Err(Error::invalid(
            path,
            format!(
                "{:?} {:?}-bit PNG; DeepLesion slices are 16-bit greyscale (HU + 32768)",
                info.color_type, info.bit_depth as u8
            ),
        ));
    }
    let mut buf = vec![0u8; reader.output_buffer_size()];
    let frame = reader.next_frame(&mut buf).map_err(bad)?;
    let bytes = &buf[..frame.buffer_size()];
    let n = width as usize * height as usize;
    if bytes.len() != 2 * n {
        return Err(Error::invalid(
            path,
            format!(
                "{} bytes of pixels for {width} x {height} 16-bit values",
                bytes.len()
            ),
        ));
    }
    let hu = bytes
        .chunks_exact(2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]) as f32 - HU_OFFSET)
        .collect();
    Ok(HuSlice {
        width: width as usize,
        height: height as usize,
        hu,
    })
}

//! Overlay pictures: a slice windowed to grey with boxes drawn in colour, enlarged so that small
//! (synthetic) slices are still easy to look at.

use a3d_ct::deeplesion::MultiSlice;
use a3d_ct::network::window;
use std::path::Path;

/// Colour of detections.
pub const DETECTION: [u8; 3] = [255, 40, 40];
/// Colour of ground-truth lesions.
pub const LESION: [u8; 3] = [40, 220, 60];

/// Writes the centre slice of `ms` (the network's window) with `boxes` (original pixels, inclusive
/// corners) outlined in their colours; slices under 384 pixels a side are enlarged by a whole
/// factor (nearest neighbour) so the outlines stay one screen pixel thin.
pub fn overlay_png(
    path: &Path,
    ms: &MultiSlice,
    boxes: &[([f32; 4], [u8; 3])],
) -> Result<(), String> {
    let (w, h) = (ms.width, ms.height);
    let k = (384 / w.max(h).max(1)).max(1);
    let (ow, oh) = (w * k, h * k);
    let centre = &ms.hu[(ms.depth / 2) * w * h..(ms.depth / 2 + 1) * w * h];
    let mut rgb = vec![0u8; ow * oh * 3];
    for y in 0..oh {
        for x in 0..ow {
            let g = (window(centre[(y / k) * w + x / k]) + 50.0)
                .round()
                .clamp(0.0, 255.0) as u8;
            rgb[(y * ow + x) * 3..][..3].copy_from_slice(&[g, g, g]);
        }
    }
    for (b, colour) in boxes {
        // The outline runs along the outer edge of the box's border pixels.
        let c = |v: f32, m: usize| (v.round().max(0.0) as usize).min(m - 1);
        let (x1, y1) = (c(b[0], w) * k, c(b[1], h) * k);
        let (x2, y2) = (c(b[2], w) * k + k - 1, c(b[3], h) * k + k - 1);
        let mut dot = |x: usize, y: usize| rgb[(y * ow + x) * 3..][..3].copy_from_slice(colour);
        for x in x1..=x2 {
            dot(x, y1);
            dot(x, y2);
        }
        for y in y1..=y2 {
            dot(x1, y);
            dot(x2, y);
        }
    }
    crate::files::write_png(path, ow, oh, png::ColorType::Rgb, &rgb)
}

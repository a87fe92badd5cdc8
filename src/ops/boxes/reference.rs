//! Float64 references for the tests: the IoU of two boxes and a plain greedy NMS over the IoU
//! matrix, written for clarity.

/// IoU in f64 with `off` added to widths and heights.
pub fn iou(a: [f32; 4], b: [f32; 4], off: f64) -> f64 {
    let [a0, a1, a2, a3] = a.map(f64::from);
    let [b0, b1, b2, b3] = b.map(f64::from);
    let w = (a2.min(b2) - a0.max(b0) + off).max(0.0);
    let h = (a3.min(b3) - a1.max(b1) + off).max(0.0);
    let inter = w * h;
    let union = (a2 - a0 + off) * (a3 - a1 + off) + (b2 - b0 + off) * (b3 - b1 + off) - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// Greedy NMS of score-sorted boxes: kept positions, each suppressing the later boxes whose
/// `suppresses(i, j)` holds.
pub fn greedy(n: usize, suppresses: impl Fn(usize, usize) -> bool) -> Vec<usize> {
    let mut kept: Vec<usize> = Vec::new();
    for j in 0..n {
        if !kept.iter().any(|&i| suppresses(i, j)) {
            kept.push(j);
        }
    }
    kept
}

//! Float64 reference of the shift operators, written from the definition: the forward map as
//! the formulas of shared/docs/operator.md, the backward map as the explicit transpose of the
//! forward one (every forward term `y[i] += coef * x[j]` sends `dy[i] * coef` back to `dx[j]`),
//! so it shares no indexing with the kernels.

/// The shape and settings of one reference problem.
#[derive(Debug, Clone)]
pub struct ShiftProblem {
    /// `[B, C, D, H, W]`.
    pub shape: [usize; 5],
    /// Channels shifted each way (`C / fold_div`).
    pub fold: usize,
    /// Per sample: `alpha` (0 for TSM).
    pub alpha: Vec<f64>,
    /// Open ends scaled by alpha (AlignShift's `padding_zero`; TSM: true).
    pub padding_zero: bool,
}

impl ShiftProblem {
    /// TSM on `shape` with `fold_div`.
    pub fn tsm(shape: [usize; 5], fold_div: usize) -> ShiftProblem {
        ShiftProblem {
            shape,
            fold: shape[1] / fold_div,
            alpha: vec![0.0; shape[0]],
            padding_zero: true,
        }
    }

    /// AlignShift on `shape`: alpha from each sample's thickness.
    pub fn align_shift(
        shape: [usize; 5],
        fold_div: usize,
        thickness: &[f64],
        ref_thickness: f64,
        padding_zero: bool,
    ) -> ShiftProblem {
        ShiftProblem {
            shape,
            fold: shape[1] / fold_div,
            alpha: thickness
                .iter()
                .map(|t| 1.0 - (ref_thickness / t).clamp(0.0, 1.0))
                .collect(),
            padding_zero,
        }
    }

    /// Calls `term(out_index, in_index, coef)` for every term of `y = shift(x)`.
    fn for_each_term(&self, mut term: impl FnMut(usize, usize, f64)) {
        let [nb, nc, nd, h, w] = self.shape;
        let np = h * w;
        let at = |b: usize, c: usize, d: usize, p: usize| ((b * nc + c) * nd + d) * np + p;
        for b in 0..nb {
            let alpha = self.alpha[b];
            let pad = if self.padding_zero { alpha } else { 1.0 };
            for c in 0..nc {
                for d in 0..nd {
                    for p in 0..np {
                        let out = at(b, c, d, p);
                        if c < self.fold {
                            if d + 1 < nd {
                                term(out, at(b, c, d, p), alpha);
                                term(out, at(b, c, d + 1, p), 1.0 - alpha);
                            } else {
                                term(out, at(b, c, d, p), pad);
                            }
                        } else if c < 2 * self.fold {
                            if d > 0 {
                                term(out, at(b, c, d, p), alpha);
                                term(out, at(b, c, d - 1, p), 1.0 - alpha);
                            } else {
                                term(out, at(b, c, d, p), pad);
                            }
                        } else {
                            term(out, at(b, c, d, p), 1.0);
                        }
                    }
                }
            }
        }
    }

    /// Elements of `x`.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether `x` is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `y = shift(x)`. A term with a zero coefficient is left out, as in the kernels.
    pub fn forward(&self, x: &[f64]) -> Vec<f64> {
        let mut y = vec![0.0; self.len()];
        self.for_each_term(|o, i, coef| {
            if coef != 0.0 {
                y[o] += coef * x[i];
            }
        });
        y
    }

    /// `dx = shift^T(dy)`.
    pub fn backward(&self, dy: &[f64]) -> Vec<f64> {
        let mut dx = vec![0.0; self.len()];
        self.for_each_term(|o, i, coef| {
            if coef != 0.0 {
                dx[i] += coef * dy[o];
            }
        });
        dx
    }

    /// The shift as A3D fusion weights `w[D, D, C]` for sample `b` (`y[k] = sum_d x[d] w[d,k,c]`):
    /// the structured matrix the cross-checks run through the fusion kernels.
    pub fn fusion_weights(&self, b: usize) -> Vec<f64> {
        let [_, nc, nd, _, _] = self.shape;
        let single = ShiftProblem {
            shape: [1, nc, nd, 1, 1],
            fold: self.fold,
            alpha: vec![self.alpha[b]],
            padding_zero: self.padding_zero,
        };
        let mut w = vec![0.0; nd * nd * nc];
        // With one pixel, index (c * nd + d) is (channel, slice).
        single.for_each_term(|o, i, coef| {
            let (c, k, d) = (o / nd, o % nd, i % nd);
            w[(d * nd + k) * nc + c] += coef;
        });
        w
    }
}

//! Training building blocks with the reference's semantics (reference-detector.md sections 4.3,
//! 5.3 and 7): target assignment and sampling, the losses with their normalisers, SGD with
//! momentum and weight decay on every parameter, gradient clipping, the learning-rate
//! schedule, and the shift-scale-rotate and flip augmentation. The training loop (`a3d train`) is built from these.

mod assign;
mod augment;
mod loss;
mod optim;
mod schedule;
mod step;

pub use assign::{assign, sample, Assigner, Assignment, Sampled, Sampler};
pub use augment::{flip_horizontal, ShiftScaleRotate, Warp};
pub use loss::{bce_with_logits_sum, smooth_l1_sum, softmax_ce_sum};
pub use optim::{clip_grad_norm, sorted_vars, Sgd};
pub use schedule::LrSchedule;
pub use step::Losses;

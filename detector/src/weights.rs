//! Checkpoints in safetensors with the reference names (`backbone.*`, `rpn_head.*`,
//! `bbox_head.*`): every tensor the model asks for is looked up and shape-checked, and what the
//! file holds beyond that is reported, so a wrong checkpoint fails with the tensors named.

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

/// Tensors a reference checkpoint holds that this model never reads: the mask head (not
/// implemented yet) and the unused fusion weights of the layers without fusion.
pub(crate) fn ignorable(name: &str) -> bool {
    name.starts_with("mask_head.")
        || name == "backbone.conv0.adaptive_align_weights"
        || (name.starts_with("backbone.transition")
            && name.ends_with(".conv.adaptive_align_weights"))
}

/// A [`SimpleBackend`] over a checkpoint's tensors that records what was asked for.
pub(crate) struct Tracked {
    tensors: HashMap<String, Tensor>,
    asked: Mutex<BTreeSet<String>>,
    problems: Mutex<Vec<String>>,
}

impl Tracked {
    pub fn new(tensors: HashMap<String, Tensor>) -> Tracked {
        Tracked {
            tensors,
            asked: Mutex::new(BTreeSet::new()),
            problems: Mutex::new(Vec::new()),
        }
    }

    fn note(&self, problem: String) {
        if let Ok(mut p) = self.problems.lock() {
            p.push(problem);
        }
    }

    /// Missing and mis-shaped tensors, then the unexpected ones, as one message (or None).
    pub fn report(&self) -> Option<String> {
        let mut problems = self.problems.lock().map(|p| p.clone()).unwrap_or_default();
        let asked = self.asked.lock().map(|a| a.clone()).unwrap_or_default();
        let mut unexpected: Vec<&String> = self
            .tensors
            .keys()
            .filter(|k| !asked.contains(*k) && !ignorable(k))
            .collect();
        unexpected.sort();
        for k in unexpected {
            problems.push(format!(
                "unexpected tensor {k} {:?} (does the checkpoint match the preset, fusion and slices?)",
                self.tensors[k].dims()
            ));
        }
        if problems.is_empty() {
            return None;
        }
        let n = problems.len();
        let mut text = problems.into_iter().take(12).collect::<Vec<_>>().join("; ");
        if n > 12 {
            text.push_str(&format!("; and {} more", n - 12));
        }
        Some(format!("{n} problem(s): {text}"))
    }
}

impl SimpleBackend for Tracked {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        if let Ok(mut a) = self.asked.lock() {
            a.insert(name.to_string());
        }
        match self.tensors.get(name) {
            Some(t) if t.shape() == &s => t.to_dtype(dtype)?.to_device(dev),
            Some(t) => {
                self.note(format!(
                    "tensor {name} is {:?}, the model needs {:?}",
                    t.dims(),
                    s.dims()
                ));
                Tensor::zeros(s, dtype, dev)
            }
            None => {
                self.note(format!("missing tensor {name} {:?}", s.dims()));
                // Zeros let the build go on, so that every problem is reported at once.
                Tensor::zeros(s, dtype, dev)
            }
        }
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        if let Ok(mut a) = self.asked.lock() {
            a.insert(name.to_string());
        }
        match self.tensors.get(name) {
            Some(t) => t.to_dtype(dtype)?.to_device(dev),
            None => candle_core::bail!("missing tensor {name}"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

/// A shared handle on a backend ([`Tracked`], [`Seeded`]): the VarBuilder owns its backend,
/// and the model keeps another handle to ask afterwards what was requested.
pub(crate) struct Shared<B>(pub std::sync::Arc<B>);

impl<B: SimpleBackend> SimpleBackend for Shared<B> {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.0.get(s, name, h, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.0.get_unchecked(name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.contains_tensor(name)
    }
}

/// A [`SimpleBackend`] that creates every variable from its initialisation hint with a seeded
/// generator (candle cannot seed its CPU generator), keeping them in a [`candle_nn::VarMap`]:
/// the same seed gives the same model.
pub(crate) struct Seeded {
    pub map: candle_nn::VarMap,
    rng: Mutex<a3d::rng::SplitMix64>,
}

impl Seeded {
    pub fn new(seed: u64) -> Seeded {
        Seeded {
            map: candle_nn::VarMap::new(),
            rng: Mutex::new(a3d::rng::SplitMix64::new(seed)),
        }
    }

    fn values(&self, s: &Shape, init: candle_nn::Init) -> candle_core::Result<Vec<f32>> {
        use candle_nn::init::{FanInOut, NormalOrUniform};
        use candle_nn::Init;
        let n = s.elem_count();
        let mut rng = self
            .rng
            .lock()
            .map_err(|_| candle_core::Error::Msg("init generator poisoned".into()))?;
        let mut normal = |mean: f64, std: f64| -> Vec<f32> {
            (0..n)
                .map(|_| {
                    // Box-Muller; 1 - u keeps the logarithm finite.
                    let (u, v) = (1.0 - rng.next_f64(), rng.next_f64());
                    (mean + std * (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
                })
                .collect()
        };
        Ok(match init {
            Init::Const(c) => vec![c as f32; n],
            Init::Randn { mean, stdev } => normal(mean, stdev),
            Init::Uniform { lo, up } => (0..n).map(|_| rng.uniform(lo, up) as f32).collect(),
            Init::Kaiming {
                dist,
                fan,
                non_linearity,
            } => {
                let fan = match fan {
                    FanInOut::FanIn => FanInOut::FanIn.for_shape(s),
                    FanInOut::FanOut => FanInOut::FanOut.for_shape(s),
                };
                let std = non_linearity.gain() / (fan.max(1) as f64).sqrt();
                match dist {
                    NormalOrUniform::Normal => normal(0.0, std),
                    NormalOrUniform::Uniform => {
                        let b = 3f64.sqrt() * std;
                        (0..n).map(|_| rng.uniform(-b, b) as f32).collect()
                    }
                }
            }
        })
    }
}

impl SimpleBackend for Seeded {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut data = self
            .map
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("variables poisoned".into()))?;
        if let Some(v) = data.get(name) {
            if v.shape() != &s {
                candle_core::bail!(
                    "variable {name} is {:?}, asked for {:?}",
                    v.dims(),
                    s.dims()
                );
            }
            return Ok(v.as_tensor().clone());
        }
        let values = self.values(&s, h)?;
        let t = Tensor::from_vec(values, s, dev)?.to_dtype(dtype)?;
        let var = candle_core::Var::from_tensor(&t)?;
        let out = var.as_tensor().clone();
        data.insert(name.to_string(), var);
        Ok(out)
    }

    fn get_unchecked(
        &self,
        name: &str,
        _dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        match self.map.data().lock() {
            Ok(d) => d
                .get(name)
                .map(|v| v.as_tensor().clone())
                .ok_or_else(|| candle_core::Error::Msg(format!("no variable {name}"))),
            Err(_) => candle_core::bail!("variables poisoned"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.map
            .data()
            .lock()
            .map(|d| d.contains_key(name))
            .unwrap_or(false)
    }
}

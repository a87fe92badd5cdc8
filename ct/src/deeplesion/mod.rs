//! DeepLesion on disk: `Images_png/<series>/<slice>.png` and `DL_info.csv`
//! (shared/docs/deeplesion.md). [`DeepLesion::open`] reads the table; [`DeepLesion::key_slices`]
//! groups its lesions by key slice for a split (noisy lesions left out of every split, as the
//! reference does); [`DeepLesion::load`] builds a key slice's D slices in HU.

mod csv;
pub mod neighbours;

pub use self::csv::{read_dl_info, read_dl_info_from, Lesion, Split, COLUMNS};
pub use neighbours::{plan, WeightRule, NETWORK_SLICE_MM};

use crate::{read_hu_png, Error, HuSlice, Limits, Result};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// A DeepLesion folder: its root (holding `Images_png/` and `DL_info.csv`) and every lesion.
#[derive(Debug, Clone)]
pub struct DeepLesion {
    /// The folder.
    pub root: PathBuf,
    /// Every row of `DL_info.csv`, in file order.
    pub lesions: Vec<Lesion>,
}

/// One key slice and every (non-noisy) lesion annotated on it.
#[derive(Debug, Clone, PartialEq)]
pub struct KeySlice {
    /// `000001_01_01_109.png`.
    pub file_name: String,
    /// `000001_01_01`.
    pub series_dir: String,
    /// 109.
    pub key_index: u32,
    /// The lesions' boxes, 0-based inclusive pixels.
    pub boxes: Vec<[f32; 4]>,
    /// Indices of the lesions in [`DeepLesion::lesions`].
    pub lesions: Vec<usize>,
    /// Pixel spacing x, y and the slice interval, mm.
    pub spacing: [f32; 3],
    /// The split.
    pub split: Split,
}

/// A key slice's input in HU: `depth` slices of `height x width`, offsets `-k..=k`.
#[derive(Debug, Clone, PartialEq)]
pub struct MultiSlice {
    /// `[depth, height, width]` HU values.
    pub hu: Vec<f32>,
    /// D.
    pub depth: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
}

impl MultiSlice {
    /// The `depth` slices around slice `z` of `volume` at the detector's 2.0 mm spacing (the
    /// volume's slice interval is `spacing[0]`), by the same rule as DeepLesion key slices;
    /// neighbours beyond the volume's ends fall back to its first or last slice.
    pub fn from_volume(
        volume: &crate::Volume,
        z: usize,
        depth: usize,
        rule: WeightRule,
    ) -> Result<MultiSlice> {
        let [nz, h, w] = volume.shape;
        if depth.is_multiple_of(2) || z >= nz {
            return Err(Error::Argument {
                arg: "z",
                problem: format!(
                    "slice {z} of {nz} with depth {depth} (odd depth, z inside the volume)"
                ),
            });
        }
        let plane = h * w;
        let mut hu = vec![0.0f32; depth * plane];
        for (d, terms) in plan(depth, volume.spacing[0], rule).iter().enumerate() {
            let out = &mut hu[d * plane..(d + 1) * plane];
            for &(offset, weight) in terms {
                let index = (z as i64 + offset).clamp(0, nz as i64 - 1) as usize;
                for (o, v) in out
                    .iter_mut()
                    .zip(&volume.hu[index * plane..(index + 1) * plane])
                {
                    *o += weight * v;
                }
            }
        }
        Ok(MultiSlice {
            hu,
            depth,
            height: h,
            width: w,
        })
    }
}

impl DeepLesion {
    /// Reads `root/DL_info.csv`.
    pub fn open(root: &Path) -> Result<DeepLesion> {
        let lesions = read_dl_info(&root.join("DL_info.csv"))?;
        Ok(DeepLesion {
            root: root.to_path_buf(),
            lesions,
        })
    }

    /// The key slices of `split` (all splits for `None`), each with its non-noisy lesions,
    /// sorted by file name (the reference's `np.unique` order). Key slices whose lesions are
    /// all noisy are left out.
    pub fn key_slices(&self, split: Option<Split>) -> Vec<KeySlice> {
        let mut groups: BTreeMap<&str, KeySlice> = BTreeMap::new();
        for (i, l) in self.lesions.iter().enumerate() {
            if l.noisy || split.is_some_and(|s| s != l.split) {
                continue;
            }
            let Some((series, _)) = l.series_and_slice() else {
                continue;
            };
            let entry = groups.entry(&l.file_name).or_insert_with(|| KeySlice {
                file_name: l.file_name.clone(),
                series_dir: series.to_string(),
                key_index: l.key_slice,
                boxes: Vec::new(),
                lesions: Vec::new(),
                spacing: l.spacing,
                split: l.split,
            });
            entry.boxes.push(l.bbox);
            entry.lesions.push(i);
        }
        groups.into_values().collect()
    }

    /// `Images_png/<series>/<index>.png` (3-digit index).
    pub fn slice_path(&self, series_dir: &str, index: i64) -> PathBuf {
        self.root
            .join("Images_png")
            .join(series_dir)
            .join(format!("{index:03}.png"))
    }

    /// The `depth` slices of `key` at the detector's 2.0 mm spacing (odd `depth`), in HU.
    /// A neighbour whose file is missing is replaced by the nearest existing one toward the key
    /// slice (the reference's edge rule). Every slice must have the key slice's size.
    pub fn load(
        &self,
        key: &KeySlice,
        depth: usize,
        rule: WeightRule,
        limits: &Limits,
    ) -> Result<MultiSlice> {
        if depth.is_multiple_of(2) {
            return Err(Error::Argument {
                arg: "depth",
                problem: format!("{depth}: the input needs an odd number of slices"),
            });
        }
        let centre = self.slice_path(&key.series_dir, key.key_index as i64);
        let terms = plan(depth, key.spacing[2] as f64, rule);
        let mut cache: HashMap<i64, HuSlice> = HashMap::new();
        fn load(
            cache: &mut HashMap<i64, HuSlice>,
            index: i64,
            path: &Path,
            limits: &Limits,
        ) -> Result<()> {
            if let std::collections::hash_map::Entry::Vacant(v) = cache.entry(index) {
                v.insert(read_hu_png(path, limits)?);
            }
            Ok(())
        }
        load(&mut cache, key.key_index as i64, &centre, limits)?;
        let (w, h) = {
            let c = &cache[&(key.key_index as i64)];
            (c.width, c.height)
        };
        let plane = w * h;
        let mut hu = vec![0.0f32; depth * plane];
        for (d, slice_terms) in terms.iter().enumerate() {
            let out = &mut hu[d * plane..(d + 1) * plane];
            for &(offset, weight) in slice_terms {
                let index = self.existing(key, offset);
                let path = self.slice_path(&key.series_dir, index);
                load(&mut cache, index, &path, limits)?;
                let s = &cache[&index];
                if (s.width, s.height) != (w, h) {
                    return Err(Error::invalid(
                        &path,
                        format!(
                            "{} x {} pixels; the key slice {} is {w} x {h}",
                            s.width,
                            s.height,
                            centre.display()
                        ),
                    ));
                }
                for (o, v) in out.iter_mut().zip(&s.hu) {
                    *o += weight * v;
                }
            }
        }
        Ok(MultiSlice {
            hu,
            depth,
            height: h,
            width: w,
        })
    }

    /// The slice index `offset` away from the key slice, moved toward it until the file exists.
    fn existing(&self, key: &KeySlice, mut offset: i64) -> i64 {
        let k = key.key_index as i64;
        while offset != 0 && !self.slice_path(&key.series_dir, k + offset).is_file() {
            offset -= offset.signum();
        }
        k + offset
    }
}

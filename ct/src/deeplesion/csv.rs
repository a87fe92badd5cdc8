//! `DL_info.csv`: one row per lesion, every column of shared/docs/deeplesion.md, parsed with the
//! `csv` crate. Pixel coordinates become 0-based (the file's are 1-based), as the reference does.

use crate::{Error, Result};
use std::path::Path;

/// The official split (`Train_Val_Test`: 1, 2, 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Split {
    /// 1
    Train,
    /// 2
    Val,
    /// 3
    Test,
}

impl Split {
    /// The CSV's code.
    pub fn code(self) -> u8 {
        match self {
            Split::Train => 1,
            Split::Val => 2,
            Split::Test => 3,
        }
    }

    /// `train`, `val` or `test`.
    pub fn from_name(name: &str) -> Option<Split> {
        match name {
            "train" => Some(Split::Train),
            "val" => Some(Split::Val),
            "test" => Some(Split::Test),
            _ => None,
        }
    }
}

/// One lesion (one row of `DL_info.csv`).
#[derive(Debug, Clone, PartialEq)]
pub struct Lesion {
    /// `000001_01_01_109.png`: the series folder, `_`, the key slice's file name.
    pub file_name: String,
    /// `Patient_index`.
    pub patient: u32,
    /// `Study_index`.
    pub study: u32,
    /// `Series_ID`.
    pub series: u32,
    /// `Key_slice_index`.
    pub key_slice: u32,
    /// `Measurement_coordinates`: the RECIST diameters' end points, 0-based pixels
    /// `(x1, y1, x2, y2)` of the long axis then the short axis.
    pub recist: [f32; 8],
    /// `Bounding_boxes`: `(x1, y1, x2, y2)`, 0-based pixels, inclusive.
    pub bbox: [f32; 4],
    /// `Lesion_diameters_Pixel_`: long and short diameter in pixels.
    pub diameters_px: [f32; 2],
    /// `Normalized_lesion_location`: (x, y, z) in 0..1.
    pub location: [f32; 3],
    /// `Coarse_lesion_type`: 1-8 on val/test, -1 on train.
    pub coarse_type: i32,
    /// `Possibly_noisy`.
    pub noisy: bool,
    /// `Slice_range`: the first and last slice index present.
    pub slice_range: [u32; 2],
    /// `Spacing_mm_px_`: x and y pixel spacing, then the slice interval, mm.
    pub spacing: [f32; 3],
    /// `Image_size`: width, height.
    pub image_size: [u32; 2],
    /// `DICOM_windows`: the window's low and high HU.
    pub dicom_window: [f32; 2],
    /// `Patient_gender`: `M` or `F`.
    pub gender: String,
    /// `Patient_age` (missing in a few rows).
    pub age: Option<f32>,
    /// `Train_Val_Test`.
    pub split: Split,
}

impl Lesion {
    /// The series folder under `Images_png/` and the key slice's file: `000001_01_01_109.png`
    /// -> (`000001_01_01`, `109.png`).
    pub fn series_and_slice(&self) -> Option<(&str, &str)> {
        self.file_name.rsplit_once('_')
    }
}

/// The column names, in the official file's order.
pub const COLUMNS: [&str; 18] = [
    "File_name",
    "Patient_index",
    "Study_index",
    "Series_ID",
    "Key_slice_index",
    "Measurement_coordinates",
    "Bounding_boxes",
    "Lesion_diameters_Pixel_",
    "Normalized_lesion_location",
    "Coarse_lesion_type",
    "Possibly_noisy",
    "Slice_range",
    "Spacing_mm_px_",
    "Image_size",
    "DICOM_windows",
    "Patient_gender",
    "Patient_age",
    "Train_Val_Test",
];

/// Reads every lesion of `path`.
pub fn read_dl_info(path: &Path) -> Result<Vec<Lesion>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    read_dl_info_from(path, file)
}

/// [`read_dl_info`] from any reader (`path` names it in errors).
pub fn read_dl_info_from(path: &Path, input: impl std::io::Read) -> Result<Vec<Lesion>> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(input);
    let csv_err = |e: csv::Error| Error::invalid(path, format!("CSV: {e}"));
    let headers = rdr.headers().map_err(csv_err)?.clone();
    let mut index = [0usize; COLUMNS.len()];
    for (slot, name) in index.iter_mut().zip(COLUMNS) {
        *slot = headers
            .iter()
            .position(|h| h.trim() == name)
            .ok_or_else(|| Error::invalid(path, format!("no column `{name}` in the header")))?;
    }
    let mut out = Vec::new();
    for (i, record) in rdr.records().enumerate() {
        let record = record.map_err(csv_err)?;
        let row = i + 1;
        let cell = |k: usize| record.get(index[k]).unwrap_or("").trim();
        let bad = |k: usize, problem: String| Error::Row {
            path: path.into(),
            row,
            column: COLUMNS[k].into(),
            problem,
        };
        let int = |k: usize| -> Result<i64> {
            let v = cell(k);
            // Some exports write integers as "109.0".
            v.parse::<i64>()
                .or_else(|_| match v.parse::<f64>() {
                    Ok(f) if f.fract() == 0.0 && f.abs() < 1e15 => Ok(f as i64),
                    _ => Err(()),
                })
                .map_err(|_| bad(k, format!("`{v}` is not an integer")))
        };
        let uint = |k: usize| -> Result<u32> {
            let v = int(k)?;
            u32::try_from(v).map_err(|_| bad(k, format!("{v} is out of range")))
        };
        let floats = |k: usize, n: usize| -> Result<Vec<f32>> {
            let v = cell(k);
            let parts: Vec<f32> = v
                .split(',')
                .map(|p| p.trim().parse::<f32>())
                .collect::<std::result::Result<_, _>>()
                .map_err(|_| bad(k, format!("`{v}` is not a list of numbers")))?;
            if parts.len() != n {
                return Err(bad(k, format!("{} numbers, expected {n}", parts.len())));
            }
            Ok(parts)
        };
        let arr = |k: usize, n: usize, finite: bool| -> Result<Vec<f32>> {
            let v = floats(k, n)?;
            if finite && v.iter().any(|x| !x.is_finite()) {
                return Err(bad(k, format!("{v:?} has a non-finite value")));
            }
            Ok(v)
        };
        let minus_one = |v: Vec<f32>| v.into_iter().map(|x| x - 1.0).collect::<Vec<f32>>();
        let recist = minus_one(arr(5, 8, true)?);
        let bbox = minus_one(arr(6, 4, true)?);
        if bbox[2] < bbox[0] || bbox[3] < bbox[1] {
            return Err(bad(6, format!("box {bbox:?} (0-based) is inverted")));
        }
        let range = floats(11, 2)?;
        if range
            .iter()
            .any(|r| !(*r >= 0.0 && r.fract() == 0.0 && *r < 1e6))
            || range[1] < range[0]
        {
            return Err(bad(
                11,
                format!("{range:?} is not a first and last slice index"),
            ));
        }
        let range = [range[0] as u32, range[1] as u32];
        let split = match int(17)? {
            1 => Split::Train,
            2 => Split::Val,
            3 => Split::Test,
            other => {
                return Err(bad(
                    17,
                    format!("{other} is not 1 (train), 2 (val) or 3 (test)"),
                ))
            }
        };
        let noisy = match int(10)? {
            0 => false,
            1 => true,
            other => return Err(bad(10, format!("{other} is not 0 or 1"))),
        };
        let age = match cell(16) {
            "" | "nan" | "NaN" => None,
            v => Some(
                v.parse::<f32>()
                    .map_err(|_| bad(16, format!("`{v}` is not a number")))?,
            ),
        };
        let spacing = floats(12, 3)?;
        let size = floats(13, 2)?;
        out.push(Lesion {
            file_name: cell(0).to_string(),
            patient: uint(1)?,
            study: uint(2)?,
            series: uint(3)?,
            key_slice: uint(4)?,
            recist: to_array(&recist),
            bbox: to_array(&bbox),
            diameters_px: to_array(&arr(7, 2, false)?),
            location: to_array(&arr(8, 3, false)?),
            coarse_type: int(9)? as i32,
            noisy,
            slice_range: range,
            spacing: to_array(&spacing),
            image_size: [size[0] as u32, size[1] as u32],
            dicom_window: to_array(&arr(14, 2, false)?),
            gender: cell(15).to_string(),
            age,
            split,
        });
        if out.last().is_some_and(|l| l.series_and_slice().is_none()) {
            return Err(bad(0, format!("`{}` is not <series>_<slice>.png", cell(0))));
        }
    }
    Ok(out)
}

fn to_array<const N: usize>(v: &[f32]) -> [f32; N] {
    std::array::from_fn(|i| v[i])
}

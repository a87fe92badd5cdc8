//! Element lengths checked against the file's size before dicom-rs allocates them.
//!
//! dicom-rs sizes each value's buffer from the element's length field before reading it, so a
//! corrupt length (up to 4 GiB) would be allocated and zero-filled whatever the file holds. This
//! pass walks the same bytes with dicom-parser's token reader, which yields each element header
//! before its value, and refuses any length that exceeds the file. No DICOM is parsed by hand:
//! the tokens come from the maintained parser.

use dicom_core::header::HasLength;
use dicom_core::{Length, VR};
use dicom_encoding::transfer_syntax::{Codec, TransferSyntaxIndex};
use dicom_parser::dataset::read::DataSetReader;
use dicom_parser::dataset::DataToken;
use dicom_transfer_syntax_registry::{entries, TransferSyntaxRegistry};

/// Checks the file meta group starting at `bytes[0]` (after `DICM`) and then the data set.
pub(super) fn with_meta(bytes: &[u8], total: usize) -> Result<(), String> {
    let meta_ts = entries::EXPLICIT_VR_LITTLE_ENDIAN.erased();
    let reader =
        DataSetReader::new_with_ts(bytes, &meta_ts).map_err(|e| format!("file meta group: {e}"))?;
    let mut end = 0usize;
    let mut ts_uid: Option<String> = None;
    let mut in_ts = false;
    for token in reader {
        // A token the parser refuses is left to dicom-object to report in full.
        let Ok(token) = token else { return Ok(()) };
        match token {
            DataToken::ElementHeader(h) => {
                if h.tag.group() != 0x0002 {
                    break;
                }
                let len = defined(h.length(), total, "file meta element")?;
                // Explicit VR: 8 header bytes, 12 for the VRs with a 4-byte length.
                let header = if matches!(
                    h.vr,
                    VR::OB
                        | VR::OW
                        | VR::OF
                        | VR::OD
                        | VR::OL
                        | VR::SQ
                        | VR::UT
                        | VR::UN
                        | VR::UC
                        | VR::UR
                        | VR::OV
                ) {
                    12
                } else {
                    8
                };
                end = end.saturating_add(header + len);
                in_ts = h.tag == dicom_dictionary_std::tags::TRANSFER_SYNTAX_UID;
            }
            DataToken::PrimitiveValue(v) if in_ts => {
                ts_uid = Some(v.to_str().trim_end_matches(['\0', ' ']).to_string());
                in_ts = false;
            }
            _ => in_ts = false,
        }
    }
    let Some(uid) = ts_uid else { return Ok(()) };
    let Some(rest) = bytes.get(end..) else {
        return Ok(());
    };
    data_set(rest, &uid, total)
}

/// Checks a data set in transfer syntax `uid`.
pub(super) fn data_set(bytes: &[u8], uid: &str, total: usize) -> Result<(), String> {
    let Some(ts) = TransferSyntaxRegistry.get(uid) else {
        return Ok(());
    };
    // A deflated data set's lengths count inflated bytes; dicom-object inflates it itself.
    if matches!(ts.codec(), Codec::Dataset(_)) || !ts.can_decode_dataset() {
        return Ok(());
    }
    let Ok(reader) = DataSetReader::new_with_ts(bytes, ts) else {
        return Ok(());
    };
    // The iterator reads a value only when asked for the token after its header.
    for token in reader {
        let Ok(token) = token else { return Ok(()) };
        match token {
            DataToken::ElementHeader(h) => {
                defined(h.length(), total, "element").map_err(|e| format!("{e} ({})", h.tag))?;
            }
            DataToken::ItemStart { len } => {
                defined(len, total, "item")?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// A length the file can hold (an undefined length is 0 here).
fn defined(len: Length, total: usize, what: &str) -> Result<usize, String> {
    match len.get() {
        None => Ok(0),
        Some(n) if (n as usize) <= total => Ok(n as usize),
        Some(n) => Err(format!(
            "a {what} claims {n} bytes, the file has {total}: truncated or corrupt"
        )),
    }
}

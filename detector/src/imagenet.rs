//! Initialising the 3D model from an ImageNet DenseNet-121 in torchvision's names, the
//! reference's way (reference-detector.md section 2.4): `features.*` without its prefix, the
//! old `norm.1` / `conv.1` spellings renamed, conv0 keeping input channel 1 only, the 2D kernels
//! copied as they are; the fusion weights, reduction-z convolutions, laterals and heads keep
//! their reference initialisation. `denseblock4`, `transition3`, `norm5` and the classifier are
//! not used (the backbone is truncated).

use std::collections::HashMap;

use candle_core::Tensor;

/// The backbone name of a torchvision DenseNet tensor, or None for the parts not used.
pub(crate) fn backbone_name(torchvision: &str) -> Option<String> {
    let rest = torchvision.strip_prefix("features.")?;
    if rest.starts_with("denseblock4")
        || rest.starts_with("transition3")
        || rest.starts_with("norm5")
    {
        return None;
    }
    // `denselayerN.norm.1.weight` -> `denselayerN.norm1.weight` (and conv.2, relu...).
    let mut parts: Vec<&str> = rest.split('.').collect();
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < parts.len() {
        let p = parts[i];
        if (p == "norm" || p == "conv")
            && i + 1 < parts.len()
            && (parts[i + 1] == "1" || parts[i + 1] == "2")
            && out.last().is_some_and(|l| l.starts_with("denselayer"))
        {
            out.push(format!("{p}{}", parts[i + 1]));
            i += 2;
            continue;
        }
        out.push(p.to_string());
        i += 1;
    }
    parts.clear();
    Some(format!("backbone.{}", out.join(".")))
}

/// The tensors of `imagenet` under the model's names, conv0 reduced to input channel 1.
pub(crate) fn mapped(
    imagenet: HashMap<String, Tensor>,
) -> candle_core::Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    for (name, t) in imagenet {
        let Some(to) = backbone_name(&name) else {
            continue;
        };
        let t = if to == "backbone.conv0.weight" && t.dims().len() == 4 && t.dims()[1] == 3 {
            t.narrow(1, 1, 1)?.contiguous()?
        } else {
            t
        };
        out.insert(to, t);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torchvision_names_map_to_the_backbone() {
        for (from, to) in [
            ("features.conv0.weight", Some("backbone.conv0.weight")),
            (
                "features.norm0.running_var",
                Some("backbone.norm0.running_var"),
            ),
            (
                "features.denseblock2.denselayer7.norm.1.weight",
                Some("backbone.denseblock2.denselayer7.norm1.weight"),
            ),
            (
                "features.denseblock1.denselayer1.conv.2.weight",
                Some("backbone.denseblock1.denselayer1.conv2.weight"),
            ),
            (
                "features.denseblock3.denselayer24.norm2.num_batches_tracked",
                Some("backbone.denseblock3.denselayer24.norm2.num_batches_tracked"),
            ),
            (
                "features.transition1.norm.weight",
                Some("backbone.transition1.norm.weight"),
            ),
            (
                "features.transition2.conv.weight",
                Some("backbone.transition2.conv.weight"),
            ),
            ("features.denseblock4.denselayer1.conv1.weight", None),
            ("features.norm5.weight", None),
            ("classifier.weight", None),
        ] {
            assert_eq!(backbone_name(from).as_deref(), to, "{from}");
        }
    }
}

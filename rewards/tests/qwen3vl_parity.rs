//! Qwen3-VL model parity against transformers 4.57.1 on the tiny random checkpoint
//! (rewards/fixtures/make_qwen3vl_fixtures.py): RoPE positions, vision tower, DeepStack, logits.

mod common;

use candle_core::{DType, Device, IndexOp, Tensor};
use toprl_rewards::qwen3_vl::{CheckpointFiles, GridThw, Qwen3VL};

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    max_abs(&(a - b).expect("same shapes"))
}

fn max_abs(a: &Tensor) -> f32 {
    let m = || a.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>();
    m().expect("max of a f32 tensor")
}

#[test]
fn logits_vision_and_positions_match_transformers() {
    let files = CheckpointFiles::from_dir(&common::tiny_model_dir()).unwrap();
    let model = Qwen3VL::load(&files, &Device::Cpu, DType::F32).unwrap();
    let parity =
        candle_core::safetensors::load(common::fixtures().join("model_parity.safetensors"), &Device::Cpu)
            .unwrap();
    let reference = common::reference();
    let ep = &reference.episodes["square100x80"];
    let prefix = ep.prefixes.iter().find(|p| p.prefix_length == 3).unwrap();
    let ids: Vec<u32> = parity["input_ids"]
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|x| x as u32)
        .collect();
    assert_eq!(ids, prefix.input_ids);
    let pv = common::patchify(&common::resized_frames("square100x80", prefix));
    let [t, h, w] = prefix.video_grid_thw;
    let grid = GridThw::new(t, h, w);

    // get_rope_index
    let pos = model.rope_positions(&ids, &model.groups_of(&[grid])).unwrap();
    let ref_pos = parity["position_ids"]
        .to_dtype(DType::U32)
        .unwrap()
        .to_vec2::<u32>()
        .unwrap();
    for (i, p) in pos.iter().enumerate() {
        assert_eq!(
            [ref_pos[0][i], ref_pos[1][i], ref_pos[2][i]],
            *p,
            "position of token {i}"
        );
    }

    // Vision tower and DeepStack mergers.
    let vis = model.visual.forward(&pv, &[grid]).unwrap();
    let ref_vis = &parity["vision_embeds"];
    assert_eq!(vis.embeds.dims(), ref_vis.dims());
    let d = max_abs_diff(&vis.embeds, ref_vis);
    assert!(
        d < 1e-4 * max_abs(ref_vis).max(1.0),
        "vision embeds differ by {d}"
    );
    for (i, ds) in vis.deepstack.iter().enumerate() {
        let r = &parity[&format!("deepstack_{i}")];
        let d = max_abs_diff(ds, r);
        assert!(d < 1e-4 * max_abs(r).max(1.0), "deepstack {i} differs by {d}");
    }

    // Logits of the last 8 positions.
    let l = ids.len();
    let rows: Vec<usize> = (l - 8..l).collect();
    let logits = model.forward(&ids, Some(&pv), &[grid], Some(&rows)).unwrap();
    let first = logits.i((.., ..256)).unwrap();
    let d = max_abs_diff(&first, &parity["logits_last8_first256"]);
    assert!(d < 2e-3, "logits differ by {d}");
    let lse = logits.log_sum_exp(1).unwrap();
    let d = max_abs_diff(&lse, &parity["logsumexp_last8"]);
    assert!(d < 2e-3, "logsumexp differs by {d}");
    let t_col = logits.i((.., 3007)).unwrap();
    let d = max_abs_diff(&t_col, &parity["logits_last8_true"]);
    assert!(d < 2e-3, "True logits differ by {d}");
    // The test is not vacuous: logits vary over a range far above the tolerance.
    assert!(max_abs(&parity["logits_last8_first256"]) > 1.0);
}

#[test]
fn wrong_pixel_count_is_an_error() {
    let files = CheckpointFiles::from_dir(&common::tiny_model_dir()).unwrap();
    let model = Qwen3VL::load(&files, &Device::Cpu, DType::F32).unwrap();
    let reference = common::reference();
    let prefix = &reference.episodes["square256"].prefixes[1];
    let pv = common::patchify(&common::resized_frames("square256", prefix));
    // Claim a smaller grid than the input ids contain.
    let err = model
        .forward(&prefix.input_ids, Some(&pv), &[GridThw::new(1, 8, 8)], None)
        .unwrap_err();
    assert!(
        err.to_string().contains("rows") || err.to_string().contains("visual"),
        "{err}"
    );
}

//! End-to-end checks of `so101 sim`: success-rate JSON, video output, and bad input.

use std::process::Command;

fn so101() -> Command {
    Command::new(env!("CARGO_BIN_EXE_so101"))
}

#[test]
fn scripted_json_reports_success_rate() {
    let out = so101()
        .args([
            "sim",
            "--task",
            "reach",
            "--episodes",
            "3",
            "--seed",
            "4",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["task"], "reach");
    assert_eq!(v["episodes"], 3);
    assert_eq!(v["success_rate"], 1.0);
    assert!(v["mean_return"].as_f64().unwrap() > 0.0);
    assert!(v["steps_per_second"].as_f64().unwrap() > 0.0);
}

#[test]
fn video_is_an_mp4_with_every_frame() {
    let dir = tempfile::tempdir().unwrap();
    let video = dir.path().join("reach.mp4");
    let out = so101()
        .args([
            "sim",
            "--task",
            "reach",
            "--episodes",
            "2",
            "--image-size",
            "64",
            "--video",
        ])
        .arg(&video)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let probe = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-select_streams",
            "v:0",
            "-show_entries",
        ])
        .args(["stream=width,height,nb_read_frames", "-of", "csv=p=0"])
        .arg(&video)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&probe.stdout);
    let fields: Vec<u32> = text.trim().split(',').map(|x| x.parse().unwrap()).collect();
    assert_eq!(&fields[..2], &[128, 64], "front and wrist side by side");
    assert!(fields[2] > 20, "{text}");
}

#[test]
fn bad_task_policy_and_noise_exit_nonzero() {
    for args in [
        vec!["sim", "--task", "stack"],
        vec!["sim", "--task", "reach", "--policy", "/no/such/checkpoint"],
        vec!["sim", "--task", "reach", "--noise", "-1"],
        vec!["sim", "--task", "reach", "--episodes", "0"],
        vec!["sim", "--task", "reach", "--threads", "0"],
    ] {
        let out = so101().args(&args).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        assert!(!out.stderr.is_empty(), "{args:?}");
        assert!(
            !String::from_utf8_lossy(&out.stderr).contains("panicked"),
            "{args:?}"
        );
    }
}

#[test]
fn record_writes_a_lerobot_dataset_that_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pick");
    let out = so101()
        .args([
            "sim",
            "--task",
            "reach",
            "--episodes",
            "2",
            "--image-size",
            "64",
            "--record",
        ])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ds = toprl_envs::dataset::LeRobotDataset::open(&path).unwrap();
    assert_eq!(ds.num_episodes(), 2);
    let ep = ds.episode(1).unwrap();
    assert!(ep.len() > 5);
    assert!(
        ep.instruction.starts_with("Move the gripper just above the"),
        "{}",
        ep.instruction
    );
    assert_eq!(ep.states[0].len(), 6);
    assert_eq!(ep.environment_states.len(), ep.len());
    assert_eq!(
        ep.environment_states[0].len(),
        toprl_envs::sim::ENVIRONMENT_STATE_DIM
    );
    for cam in ["observation.images.front", "observation.images.wrist"] {
        assert_eq!(ep.cameras[cam].len(), ep.len(), "{cam}");
        assert_eq!(ep.cameras[cam][0].dimensions(), (64, 64));
    }
    // Refuses to overwrite.
    let again = so101()
        .args(["sim", "--task", "reach", "--episodes", "1", "--record"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!again.status.success());

    // A state policy with the cube pose trains on the recorded dataset; the same config on a dataset
    // recorded by a real robot (no environment state) is refused before training.
    let config = |data: &std::path::Path| {
        format!(
            "[task]\nname = \"reach\"\nmax_steps = 20\n[data]\nsource = \"lerobot\"\npath = {:?}\n\
             [policy]\nkind = \"gaussian\"\nchunk = 5\nenvironment_state = true\n\
             [train]\nsteps = 4\nbatch_size = 8\neval_every = 4\n[eval]\nepisodes = 1\n\
             [[arms]]\nname = \"bc\"\nreward = \"none\"\n",
            data.display().to_string()
        )
    };
    let train = |cfg: &str, name: &str| {
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, cfg).unwrap();
        Command::new(env!("CARGO_BIN_EXE_train"))
            .arg(&path)
            .arg("--out")
            .arg(dir.path().join(name))
            .output()
            .unwrap()
    };
    let ok = train(&config(&path), "from_recording");
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let robot = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../envs/fixtures/lerobot/so101_v30");
    let refused = train(&config(&robot), "from_robot");
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("observation.environment_state"), "{err}");
    assert!(!dir.path().join("from_robot/results.json").exists());

    // An image policy at half the recording's resolution, with a TOPReward arm scoring the other camera:
    // the dataset's 64 px front frames are resized to the policy's 32 px while decoding, the wrist camera
    // is decoded only for the reward model, and the checkpoint records the size it was trained at.
    let tiny = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../rewards/fixtures/qwen3vl-tiny");
    let image_policy = format!(
        "[task]\nname = \"reach\"\nmax_steps = 10\nimage_size = 32\ncameras = [\"front\"]\n\
         [data]\nsource = \"lerobot\"\npath = {:?}\n\
         [policy]\nkind = \"act\"\nchunk = 5\n[policy.network]\nd_model = 16\nn_heads = 2\nd_ff = 32\n\
         [train]\nsteps = 2\nbatch_size = 2\neval_every = 2\nema_decay = 0.99\n[eval]\nepisodes = 1\n\
         [reward_model]\nmodel = {:?}\ncamera = \"observation.images.wrist\"\nfps = 5.0\n\
         [[arms]]\nname = \"topreward\"\nreward = \"topreward\"\n",
        path.display().to_string(),
        tiny.display().to_string()
    );
    let ok = train(&image_policy, "image_policy");
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let meta: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            dir.path()
                .join("image_policy/runs/topreward/seed-0/checkpoint/policy.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(meta["image_size"], serde_json::json!([32, 32]), "{meta}");
    // With ema_decay the checkpoint's policy is the weight average, the raw weights kept for resuming.
    let run = dir.path().join("image_policy/runs/topreward/seed-0/checkpoint");
    assert!(run.join("training_weights.bpk").is_file());
    let md = std::fs::read_to_string(dir.path().join("image_policy/results.md")).unwrap();
    assert!(md.contains("EMA 0.99"), "{md}");
    // The trained policy acts on the recording's 64 px frames through `so101 sim`, resized to 32 px.
    let rollout = so101()
        .args(["sim", "--task", "reach", "--episodes", "1", "--image-size", "64"])
        .arg("--policy")
        .arg(&run)
        .output()
        .unwrap();
    assert!(
        rollout.status.success(),
        "{}",
        String::from_utf8_lossy(&rollout.stderr)
    );
}

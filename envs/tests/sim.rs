//! The MuJoCo SO-101 environment end to end: joint ranges against the MJCF, action validation and
//! clipping, determinism (states and rendered images), expert success with and without noise, progress
//! along expert episodes, rendering, and the vectorised environments.

use toprl_envs::sim::env::{CAMERAS, action_bounds};
use toprl_envs::sim::vec_env::{BuiltinPolicy, parallel_rollouts};
use toprl_envs::sim::{
    ActionSource, RolloutOptions, ScriptedExpert, SimConfig, SimError, So101Env, Task, VecEnv, rollout,
};
use toprl_envs::so101::{JOINT_RANGES_RAD, MOTOR_NAMES};

fn physics_only(task: Task) -> SimConfig {
    SimConfig {
        cameras: vec![],
        ..SimConfig::for_task(task)
    }
}

fn small_images(task: Task) -> SimConfig {
    SimConfig {
        image_size: 64,
        ..SimConfig::for_task(task)
    }
}

#[test]
fn joint_ranges_match_the_mjcf() {
    let dir = toprl_envs::assets::so101_assets_dir().unwrap();
    let xml = std::fs::read_to_string(dir.join("so101_new_calib.xml")).unwrap();
    for (motor, (lo, hi)) in MOTOR_NAMES.iter().zip(JOINT_RANGES_RAD) {
        let tag = format!("name=\"{motor}\" type=\"hinge\" range=\"");
        let start = xml
            .find(&tag)
            .unwrap_or_else(|| panic!("joint {motor} not in the MJCF"))
            + tag.len();
        let range: Vec<f64> = xml[start..]
            .split('"')
            .next()
            .unwrap()
            .split_whitespace()
            .map(|x| x.parse().unwrap())
            .collect();
        assert_eq!(range, vec![lo, hi], "{motor}");
    }
}

#[test]
fn actions_are_clipped_and_bad_actions_rejected_without_breaking_the_env() {
    let mut env = So101Env::new(physics_only(Task::Reach)).unwrap();
    assert!(matches!(env.step(&[0.0; 6]), Err(SimError::NotReset)));
    env.reset(Some(1)).unwrap();
    assert!(matches!(
        env.step(&[0.0; 7]),
        Err(SimError::ActionLength { expected: 6, got: 7 })
    ));
    assert!(matches!(
        env.step(&[f32::NAN, 0., 0., 0., 0., 0.]),
        Err(SimError::NonFiniteAction { .. })
    ));
    // Far beyond every limit: clipped, and the joints end up at (not past) their limits.
    let (lo, hi) = action_bounds();
    let mut last = None;
    for _ in 0..45 {
        last = Some(env.step(&[1e4, 1e4, -1e4, 1e4, -1e4, 1e4]).unwrap());
    }
    let last = last.unwrap();
    assert!(last.info.clipped);
    let state = last.observation.state;
    for i in 0..6 {
        assert!(
            state[i] >= lo[i] - 2.0 && state[i] <= hi[i] + 2.0,
            "{}: {}",
            MOTOR_NAMES[i],
            state[i]
        );
    }
    // The commanded targets sit exactly at the range limits.
    let ctrl = env.ctrl_rad();
    assert!((ctrl[0] - JOINT_RANGES_RAD[0].1).abs() < 1e-5);
    assert!((ctrl[2] - JOINT_RANGES_RAD[2].0).abs() < 1e-5);
    assert!((ctrl[5] - JOINT_RANGES_RAD[5].1).abs() < 1e-5);
    // The pan joint follows its command towards the limit (position control works).
    assert!(state[0] > 60.0, "pan only reached {}", state[0]);
}

#[test]
fn same_seed_gives_identical_trajectories_and_images() {
    let run = || {
        let mut env = So101Env::new(small_images(Task::PickCube)).unwrap();
        let mut expert = ScriptedExpert::new(&env, 0.7, 11);
        let r = rollout(
            &mut env,
            ActionSource::Expert(&mut expert),
            5,
            RolloutOptions::default(),
        )
        .unwrap();
        r.episode
    };
    let a = run();
    let b = run();
    assert_eq!(a.states, b.states);
    assert_eq!(a.actions, b.actions);
    assert_eq!(a.instruction, b.instruction);
    assert_eq!(
        a.cameras, b.cameras,
        "rendered frames differ between identical runs"
    );
    // A different seed changes the episode.
    let mut env = So101Env::new(physics_only(Task::PickCube)).unwrap();
    let (o1, _) = env.reset(Some(5)).unwrap();
    let s1 = env.task_state();
    env.reset(Some(6)).unwrap();
    assert_ne!(s1.cube, env.task_state().cube);
    assert_eq!(o1.state, env.state(), "the arm always starts at home");
}

fn success_rate(task: Task, noise: f64, seeds: std::ops::Range<u64>) -> f64 {
    let cfg = physics_only(task);
    let seeds: Vec<u64> = seeds.collect();
    let runs =
        parallel_rollouts(&cfg, BuiltinPolicy::Scripted { noise }, &seeds, 2, false).expect("rollouts");
    runs.iter().filter(|r| r.success).count() as f64 / runs.len() as f64
}

#[test]
fn experts_succeed_cleanly_and_fail_more_with_noise() {
    for task in Task::ALL {
        let clean = success_rate(task, 0.0, 0..8);
        assert!(clean >= 0.85, "{task}: clean expert success {clean}");
        let noisy = success_rate(task, 1.5, 0..8);
        assert!(noisy < clean, "{task}: noisy {noisy} vs clean {clean}");
    }
}

#[test]
fn progress_rises_along_expert_episodes_and_ends_at_one() {
    for task in Task::ALL {
        let mut env = So101Env::new(physics_only(task)).unwrap();
        let mut expert = ScriptedExpert::new(&env, 0.0, 3);
        let r = rollout(
            &mut env,
            ActionSource::Expert(&mut expert),
            3,
            RolloutOptions::default(),
        )
        .unwrap();
        let p = r.episode.true_progress.as_ref().unwrap();
        assert_eq!(p.len(), r.episode.len());
        assert!(r.success, "{task}");
        assert_eq!(*p.last().unwrap(), 1.0, "{task}");
        assert!(p[0] < 0.1, "{task}: starts at {}", p[0]);
        assert!(p.iter().all(|x| (0.0..=1.0).contains(x)));
        // Nearly monotone: no dip larger than 0.1 below the running maximum.
        let mut best = 0.0f32;
        for (t, x) in p.iter().enumerate() {
            assert!(
                *x > best - 0.1,
                "{task}: progress {x} at {t} after reaching {best}"
            );
            best = best.max(*x);
        }
        // Random flailing makes little progress on the manipulation tasks.
        if task != Task::Reach {
            let r = rollout(
                &mut env,
                ActionSource::Random { step_deg: 3.0 },
                3,
                RolloutOptions::default(),
            )
            .unwrap();
            assert!(!r.success);
            let p = r.episode.true_progress.unwrap();
            assert!(p.iter().cloned().fold(0.0, f32::max) < 0.6, "{task}");
        }
    }
}

fn near_colour(img: &image::RgbImage, rgb: [u8; 3], tol: i32) -> usize {
    img.pixels()
        .filter(|p| (0..3).all(|c| (i32::from(p[c]) - i32::from(rgb[c])).abs() <= tol))
        .count()
}

#[test]
fn cameras_see_the_scene_and_images_change_when_the_arm_moves() {
    let cfg = SimConfig {
        cameras: CAMERAS.iter().map(|c| c.to_string()).collect(),
        ..small_images(Task::PickCube)
    };
    let mut env = So101Env::new(cfg.clone()).unwrap();
    let (obs, _) = env.reset(Some(0)).unwrap();
    assert_eq!(obs.images.len(), 3);
    for (key, img) in &obs.images {
        assert_eq!(img.dimensions(), (64, 64), "{key}");
        let mean = img
            .pixels()
            .map(|p| p[0] as f64 + p[1] as f64 + p[2] as f64)
            .sum::<f64>()
            / (64.0 * 64.0 * 3.0);
        let var = img.pixels().map(|p| (p[0] as f64 - mean).powi(2)).sum::<f64>() / (64.0 * 64.0);
        assert!(var.sqrt() > 10.0, "{key} is nearly uniform (std {})", var.sqrt());
    }
    // The yellow arm is in the front view; the cube's colour shows in the front and wrist views.
    let front = &obs.images["observation.images.front"];
    assert!(
        near_colour(front, [255, 209, 31], 90) > 30,
        "no arm-coloured pixels in the front view"
    );
    let colour = env.cube_colour();
    assert_eq!(colour, "orange", "seed 0 draws an orange cube");
    for cam in ["front", "wrist"] {
        let img = &obs.images[&format!("observation.images.{cam}")];
        assert!(
            near_colour(img, [242, 128, 20], 60) >= 3,
            "cube not visible from {cam}"
        );
    }
    // Swing the arm: every camera's image changes.
    let mut moved = None;
    for _ in 0..20 {
        moved = Some(env.step(&[40.0, -30.0, 30.0, 40.0, 0.0, 20.0]).unwrap());
    }
    for (key, img) in &moved.unwrap().observation.images {
        if key.ends_with("top") || key.ends_with("front") || key.ends_with("wrist") {
            assert_ne!(img, &obs.images[key], "{key} did not change");
        }
    }
    // Bigger images on request.
    let mut big = So101Env::new(SimConfig {
        image_size: 96,
        cameras: vec!["front".into()],
        ..cfg
    })
    .unwrap();
    let (obs, _) = big.reset(Some(0)).unwrap();
    assert_eq!(obs.images["observation.images.front"].dimensions(), (96, 96));
}

#[test]
fn vector_env_matches_single_envs() {
    let cfg = physics_only(Task::PushCube);
    let mut venv = VecEnv::new(cfg.clone(), 2).unwrap();
    let resets = venv.reset(&[Some(1), Some(2)]).unwrap();
    let mut single = So101Env::new(cfg).unwrap();
    let (o, _) = single.reset(Some(2)).unwrap();
    assert_eq!(resets[1].0.state, o.state);
    let action = vec![10.0, -20.0, 15.0, 30.0, 0.0, 40.0];
    let mut last = Vec::new();
    for _ in 0..5 {
        last = venv.step(&[action.clone(), action.clone()]).unwrap();
        single.step(&action).unwrap();
    }
    assert_eq!(last[1].observation.state, single.state());
    assert!(
        venv.step(std::slice::from_ref(&action)).is_err(),
        "wrong number of actions"
    );
    assert!(matches!(
        venv.step(&[action.clone(), vec![0.0; 3]]).unwrap_err(),
        SimError::ActionLength { expected: 6, got: 3 }
    ));
}

#[test]
fn unknown_names_are_typed_errors() {
    assert!(matches!(
        "stack".parse::<Task>(),
        Err(SimError::UnknownTask { .. })
    ));
    let cfg = SimConfig {
        cameras: vec!["side".into()],
        ..SimConfig::default()
    };
    assert!(matches!(So101Env::new(cfg), Err(SimError::UnknownCamera { .. })));
    let cfg = SimConfig {
        image_size: 4,
        ..SimConfig::default()
    };
    assert!(matches!(
        So101Env::new(cfg),
        Err(SimError::Config {
            field: "image_size",
            ..
        })
    ));
    let json = r#"{"task": "push_cube", "image_size": 64, "bogus": 1}"#;
    assert!(
        serde_json::from_str::<SimConfig>(json).is_err(),
        "unknown config fields are rejected"
    );
    let cfg: SimConfig = serde_json::from_str(r#"{"task": "push_cube"}"#).unwrap();
    assert_eq!(cfg.task, Task::PushCube);
    assert_eq!(cfg.image_size, 128);
}

#[test]
fn environment_state_tracks_the_cube_and_target() {
    let mut env = So101Env::new(physics_only(Task::PickCube)).unwrap();
    let mut expert = ScriptedExpert::new(&env, 0.0, 5);
    let r = rollout(
        &mut env,
        ActionSource::Expert(&mut expert),
        5,
        RolloutOptions::default(),
    )
    .unwrap();
    assert!(r.success);
    let ep = &r.episode;
    assert_eq!(ep.environment_states.len(), ep.len());
    let first = &ep.environment_states[0];
    let last = ep.environment_states.last().unwrap();
    assert_eq!(first.len(), toprl_envs::sim::ENVIRONMENT_STATE_DIM);
    // The cube starts on the table inside the randomisation box and ends lifted.
    assert!(
        (0.17..0.25).contains(&first[0]) && (-0.09..0.09).contains(&first[1]),
        "{first:?}"
    );
    assert!(
        last[2] > first[2] + 0.04,
        "cube not lifted: {first:?} -> {last:?}"
    );
    assert!(
        first[3].abs() <= std::f32::consts::FRAC_PI_4 + 1e-3,
        "yaw {}",
        first[3]
    );
    // The final row equals what the env reports for its current state.
    let now = env.environment_state();
    assert_eq!(last.as_slice(), now.as_slice());
    // Another scene seed moves the cube.
    let (obs, _) = env.reset(Some(6)).unwrap();
    assert_ne!(obs.environment_state[..2], first[..2]);
}

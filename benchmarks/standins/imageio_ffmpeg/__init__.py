"""Stand-in for imageio_ffmpeg on a machine without it: runs there keep videos off."""


def write_frames(*args, **kwargs):
    raise RuntimeError(
        "imageio_ffmpeg stand-in: this machine cannot write videos; "
        "set task.env_runner.n_train_vis=0 and n_test_vis=0"
    )

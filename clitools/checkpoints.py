"""What the training loops of both packages share: Orbax checkpoints and the collective stop decision.

    mngr = checkpoint_manager("OUT/checkpoints", max_to_keep=2)
    save_checkpoint(mngr, state, config)         # state: a pytree with an int "step"; config: a ConfigDict
    state, config_dict = restore_checkpoint(mngr, abstract_state)   # (None, None) without checkpoints
    if stop_requested(stop): ...                 # every process agrees (a signal to any of them stops all)

Used by four_d/train_loop.py (`four-d fit`, `four-d animate`) and cine_jax/train/loop.py (`cine-jax train`).
jax / orbax are imported inside the functions, so importing clitools stays light.
"""


def checkpoint_manager(ckpt_dir, max_to_keep):
    """A synchronous Orbax CheckpointManager in ckpt_dir with named items "state" and "config"."""
    import os

    import orbax.checkpoint as ocp

    opts = ocp.CheckpointManagerOptions(max_to_keep=int(max_to_keep), create=True, enable_async_checkpointing=False)
    return ocp.CheckpointManager(os.path.abspath(ckpt_dir), options=opts, item_names=("state", "config"))


def save_checkpoint(mngr, state, config):
    """Save `state` (a pytree with an int "step") and `config` (ConfigDict, as JSON) at state["step"].
    Collective on several processes (Orbax writes from the primary host)."""
    import orbax.checkpoint as ocp

    step = int(state["step"])
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                            config=ocp.args.JsonSave(config.to_dict())), force=True)
    mngr.wait_until_finished()


def restore_checkpoint(mngr, abstract_state):
    """Latest (state, config dict), or (None, None) without checkpoints."""
    import orbax.checkpoint as ocp

    step = mngr.latest_step()
    if step is None:
        return None, None
    out = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                                     config=ocp.args.JsonRestore()))
    return out["state"], out["config"]


def stop_requested(stop):
    """True when `stop` (a signals.GracefulStop, or anything with `.requested`) asks to stop; with several
    processes, when any of them was asked: the flags are all-gathered so every process stops after the same step."""
    import jax
    import numpy as np

    flag = bool(stop.requested)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        flag = bool(np.any(multihost_utils.process_allgather(np.asarray([flag], np.int32))))
        if flag and not stop.requested and hasattr(stop, "request"):
            stop.request()
    return flag

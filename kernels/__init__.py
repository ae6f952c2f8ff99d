"""Pure rendering math: no parameters, no I/O, no Flax. jnp in, jnp (or a dict of jnp) out."""

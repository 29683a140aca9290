"""State dicts in an official key layout for networks built on spandrel's architectures.

spandrel's classes name some tensors differently from the official code (e.g. BSRGAN's ``RRDB_trunk.0.RDB1.conv1``
is spandrel's ``model.1.sub.0.RDB1.conv1.0``). :class:`OfficialKeys` maps every key of the network one to one:
``state_dict()`` returns the official names and ``load_state_dict`` takes them, so a checkpoint in the official
layout loads strictly (a key that is not an official name stays unexpected, a missing one stays missing).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable


class OfficialKeys:
    """Mixin for an ``nn.Module``: call :meth:`_init_official_keys` at the end of ``__init__``."""

    def _init_official_keys(self, to_official: Callable[[str], str] | dict[str, str]) -> None:
        """``to_official``: the official name of a network key, or a {network prefix: official prefix} dict
        (the official prefix is given first, as it reads in a checkpoint)."""
        if isinstance(to_official, dict):
            prefixes = dict(to_official)

            def to_official(k, prefixes=prefixes):
                for off, own in prefixes.items():
                    if k.startswith(own):
                        return off + k[len(own):]
                return k
        own_keys = list(self.state_dict().keys())
        sp2off = {k: to_official(k) for k in own_keys}
        if len(set(sp2off.values())) != len(sp2off):
            raise AssertionError(f"{type(self).__name__}: official key map is not one to one")
        self._sp2off = sp2off
        self._off2sp = {v: k for k, v in sp2off.items()}
        self.register_state_dict_post_hook(_to_official_hook)
        self.register_load_state_dict_pre_hook(_from_official_hook)
        self.register_load_state_dict_post_hook(_report_official_hook)


def _to_official_hook(module, state_dict, prefix, local_metadata):
    items = list(state_dict.items())
    state_dict.clear()
    for k, v in items:
        if k.startswith(prefix) and k[len(prefix):] in module._sp2off:
            k = prefix + module._sp2off[k[len(prefix):]]
        state_dict[k] = v


def _from_official_hook(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                        error_msgs):
    module._official_prefix = prefix
    renamed = OrderedDict()
    for k, v in state_dict.items():
        rest = k[len(prefix):] if k.startswith(prefix) else None
        if rest is not None and rest in module._off2sp:
            k = prefix + module._off2sp[rest]
        elif rest is not None and rest in module._sp2off:  # a network name that is not an official one
            k = prefix + "[not an official key] " + rest
        renamed[k] = v
    state_dict.clear()
    state_dict.update(renamed)


def _report_official_hook(module, incompatible_keys):
    """torch's strict-load message names the official keys: missing ones by their official name, unexpected
    ones as they were in the state dict."""
    prefix = getattr(module, "_official_prefix", "")
    miss = incompatible_keys.missing_keys
    for i, k in enumerate(miss):
        if k.startswith(prefix) and k[len(prefix):] in module._sp2off:
            miss[i] = prefix + module._sp2off[k[len(prefix):]]
    unexp = incompatible_keys.unexpected_keys
    for i, k in enumerate(unexp):
        unexp[i] = k.replace("[not an official key] ", "")

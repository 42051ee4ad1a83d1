"""Shell completion: the callbacks the CLI's parameters complete with, and the shell scripts
(``ctrlpost completion SHELL``, shipped in ``completions/``) that ask the program for them.

Every TAB runs the program, so the callbacks are cheap: no torch; the recipe schema (pydantic)
only when a ``--set`` is completed. Names of modalities, data sources and flavors come from the
plugin registries and ``--set`` keys and values from the recipe schema, never from a list here:
a plugin's addition or a new recipe key is offered as soon as it exists.

A folder completes as ``dir/`` and a ``--set`` key as ``key=``; the scripts add no space after
either, so the user goes on typing. Values are offered as the program reads them
(``data.resolution="720"``); each script quotes them for its shell.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from ctrlpost.errors import CtrlpostError

SHELLS = ("bash", "zsh", "fish")
EMBED_DEVICES = ("auto", "cpu", "cuda")


# ---------------------------------------------------------------------------------------------
# paths


def _paths(incomplete: str, keep: Callable[[Path], bool]) -> Iterator[str]:
    """Folders (``dir/``, so the path goes on) and the files ``keep`` accepts, whose path
    starts with what has been typed; hidden ones only once a ``.`` is typed."""
    folder, slash, prefix = incomplete.rpartition("/")
    shown = folder + slash  # what the user typed of the folder, kept as typed (``~/``, ``./``)
    try:
        entries = sorted(Path(shown or ".").expanduser().iterdir())
    except OSError:
        return
    for entry in entries:
        hidden = entry.name.startswith(".") and not prefix.startswith(".")
        if hidden or not entry.name.startswith(prefix):
            continue
        if entry.is_dir():
            yield f"{shown}{entry.name}/"
        elif keep(entry):
            yield f"{shown}{entry.name}"


def complete_recipe(incomplete: str) -> Iterator[str]:
    """``*.toml`` files and folders."""
    yield from _paths(incomplete, lambda path: path.suffix == ".toml")


def complete_checkpoint(incomplete: str) -> Iterator[str]:
    """``*.pt`` files and folders (a run folder is a checkpoint's folder too)."""
    yield from _paths(incomplete, lambda path: path.suffix == ".pt")


def complete_control_checkpoint(incomplete: str) -> Iterator[str]:
    """``none`` (the base alone), ``*.pt`` files and folders."""
    yield from (word for word in ("none",) if word.startswith(incomplete))
    yield from complete_checkpoint(incomplete)


def complete_png(incomplete: str) -> Iterator[str]:
    """``*.png`` files and folders: where an image is written."""
    yield from _paths(incomplete, lambda path: path.suffix == ".png")


def complete_folder(incomplete: str) -> Iterator[str]:
    """Folders only."""
    yield from _paths(incomplete, lambda path: False)


# ---------------------------------------------------------------------------------------------
# registered names and fixed words


def registered(lookup: str) -> list[str]:
    """The names the registry's ``lookup`` (``installed_flavors``...) returns; none when a plugin
    is broken (the command itself then says why)."""
    from ctrlpost.modalities import registry

    try:
        return list(getattr(registry, lookup)())
    except CtrlpostError:
        return []


def complete_modality(incomplete: str) -> Iterator[str]:
    """Names of installed modality plugins."""
    yield from (name for name in registered("installed_modalities") if name.startswith(incomplete))


def complete_stages(incomplete: str) -> Iterator[str]:
    """Stage names of `verify`, after any already typed (``recipe,plu`` → ``recipe,plugins``)."""
    from ctrlpost.preflight import STAGES

    done, _, current = incomplete.rpartition(",")
    for stage in STAGES:
        if stage.startswith(current):
            yield f"{done},{stage}" if done else stage


def complete_shell(incomplete: str) -> Iterator[str]:
    yield from (shell for shell in SHELLS if shell.startswith(incomplete))


def complete_data_source(incomplete: str) -> Iterator[str]:
    """Names of registered `fetch-data` sources."""
    names = registered("installed_data_sources")
    yield from (name for name in names if name.startswith(incomplete))


def complete_embed_device(incomplete: str) -> Iterator[str]:
    yield from (name for name in EMBED_DEVICES if name.startswith(incomplete))


def complete_embed_precision(incomplete: str) -> Iterator[str]:
    yield from (name for name in ("fp16", "bf16") if name.startswith(incomplete))


def complete_control_modality(incomplete: str) -> Iterator[str]:
    """Modalities with a released control branch in some registered flavor's hub release."""
    from ctrlpost.modalities import registry
    from ctrlpost.weights.catalog import released_controls

    try:
        names = {name for flavor in registry.installed_flavors().values() if flavor.release
                 for name in released_controls(flavor.release.repo_id)}
    except CtrlpostError:
        return
    yield from (name for name in sorted(names) if name.startswith(incomplete))


# ---------------------------------------------------------------------------------------------
# --set KEY=VALUE, from the recipe schema

#: Keys the schema types as plain text because a plugin checks them (`verify`'s plugins stage),
#: and the registry lookup that names their values.
_CHECKED_BY_PLUGINS = {"control.0.modality": "installed_modalities"}
#: A numeric part of a typed key: an index into an array of tables (``control.1.weight``).
_INDEX = re.compile(r"(?<=\.)\d+(?=\.|$)")


def complete_override(incomplete: str) -> Iterator[str]:
    """``--set KEY=VALUE``: every recipe key as ``key=`` (``tr`` offers ``train.steps=``...),
    then the values a key allows (``parallel.activation_checkpointing=`` offers ``none``,
    ``selective``, ``full``), written as the override parser reads them back."""
    typed_key, equals, typed_value = incomplete.partition("=")
    schema_key = _INDEX.sub("0", typed_key)  # [[control]]'s fields are the same at any index
    keys = recipe_keys()
    if not equals:
        yield from (typed_key + key[len(schema_key):] + "="
                    for key in keys if key.startswith(schema_key))
    elif schema_key in keys:
        yield from (f"{typed_key}={value}" for value in allowed_values(schema_key, keys[schema_key])
                    if value.startswith(typed_value))


@functools.cache
def recipe_keys() -> dict[str, Any]:
    """Every key ``--set`` sets, dotted as the override parser reads it, with its pydantic
    field; an array of tables (``[[control]]``) is indexed: ``control.0.weight``."""
    from ctrlpost.recipe import Recipe

    keys: dict[str, Any] = {}

    def walk(model: Any, prefix: str) -> None:
        for name, field in model.model_fields.items():
            if (section := _model(field.annotation)) is not None:
                walk(section, f"{prefix}{name}.")
            elif (item := _table_array_item(field.annotation)) is not None:
                walk(item, f"{prefix}{name}.0.")
            else:
                keys[f"{prefix}{name}"] = field

    walk(Recipe, "")
    return keys


def allowed_values(key: str, field: Any) -> list[str]:
    """The values ``key`` takes, as ``--set`` text: a Literal's choices, ``true``/``false``, or
    the names a registry holds; none for free values (numbers, paths)."""
    from ctrlpost.recipe_overrides import parse_value

    if key in _CHECKED_BY_PLUGINS:
        return registered(_CHECKED_BY_PLUGINS[key])
    lookup = _registry_lookup(field)
    if lookup is not None:
        return registered(lookup)
    texts = []
    for value in _choices(field.annotation):
        if isinstance(value, bool):
            texts.append("true" if value else "false")
        elif isinstance(value, str):  # a bare word where the parser reads it back as this text
            texts.append(value if parse_value(key, value) == value else json.dumps(value))
    return texts


def _choices(annotation: Any) -> Iterable[Any]:
    """The values of a ``Literal``, ``bool`` or an optional one; none for other types."""
    if annotation is bool:
        return (True, False)
    if get_origin(annotation) is Literal:
        return get_args(annotation)
    if _is_union(annotation):
        return [value for arg in get_args(annotation) for value in _choices(arg)]
    return ()


def _registry_lookup(field: Any) -> str | None:
    """The registry lookup a name field is checked against (``DataSourceName``: its validator
    is ``registered(..., lookup="installed_data_sources")``)."""
    from ctrlpost.recipe_names import registered as check

    for meta in field.metadata:
        func = getattr(meta, "func", None)
        if isinstance(func, functools.partial) and func.func is check:
            return str(func.keywords["lookup"])
    return None


def _model(annotation: Any) -> Any:
    from pydantic import BaseModel

    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) \
        else None


def _table_array_item(annotation: Any) -> Any:
    if get_origin(annotation) in (tuple, list):
        return _model(get_args(annotation)[0])
    return None


def _is_union(annotation: Any) -> bool:
    import types

    return get_origin(annotation) in (Union, types.UnionType)


# ---------------------------------------------------------------------------------------------
# the shell scripts

# Each script sends the line up to the cursor as COMP_WORDS and the program splits it (bash would
# split `key=value` at the `=`); the '' appended makes the last word the one being completed,
# empty after a space, so COMP_CWORD=-1 points at it. The replies are one per line.
_ASK = ("env COMP_WORDS=\"{line}''\" COMP_CWORD=-1 _CTRLPOST_COMPLETE=complete_bash "
        "{program} 2>/dev/null")

_BASH = r"""# bash completion for ctrlpost; to install it:
#   ctrlpost completion bash > ~/.local/share/bash-completion/completions/ctrlpost
_ctrlpost_completion() {
    local line=${COMP_LINE:0:COMP_POINT} cur=${COMP_WORDS[COMP_CWORD]} drop word
    # Bash replaces only the text after the last = or : typed (which is a word of its own in
    # COMP_WORDS), so each reply drops what comes before it.
    [[ $cur == [=:] ]] && cur=
    drop=${line##*[[:space:]]}
    drop=${drop%%"$cur"}
    COMPREPLY=()
    while IFS= read -r word; do
        [[ -n $word ]] || continue
        printf -v word %%q "${word#"$drop"}"
        [[ $word == '\~'* ]] && word=${word:1}  # a leading ~ stays the home folder
        COMPREPLY+=("$word")
    done < <(%(ask)s)
    # A folder (dir/) or a key (key=) goes on: no space after it.
    if [[ ${#COMPREPLY[@]} -eq 1 && ${COMPREPLY[0]} == *[/=] ]]; then compopt -o nospace; fi
    return 0
}

complete -F _ctrlpost_completion ctrlpost
"""

_ZSH = r"""#compdef ctrlpost
# zsh completion for ctrlpost; to install it:
#   ctrlpost completion zsh > "${fpath[1]}/_ctrlpost"
_ctrlpost() {
    local -a quoted
    local word
    for word in ${(f)"$(%(ask)s)"}; do
        word=${(q)word}  # quoted for zsh, but a leading ~ stays the home folder
        [[ $word == '\~'* ]] && word=${word:1}
        quoted+=("$word")
    done
    # The program has matched them (-U); -Q: they are quoted already.
    # A folder (dir/) or a key (key=) goes on: no space after it.
    compadd -Q -U -S '' -- ${(M)quoted:#*[/=]}
    compadd -Q -U -- ${quoted:#*[/=]}
}

if [[ $zsh_eval_context[-1] == loadautofunc ]]; then
    _ctrlpost "$@"
else
    compdef _ctrlpost ctrlpost
fi
"""

# fish adds no space after a completion that ends in / or =, and quotes each one itself.
_FISH = r"""# fish completion for ctrlpost; to install it:
#   ctrlpost completion fish > ~/.config/fish/completions/ctrlpost.fish
function __ctrlpost_complete
    set -l line (commandline -cp)
    %(ask)s
end

complete --command ctrlpost --no-files --arguments '(__ctrlpost_complete)'
"""

_SCRIPTS = {
    "bash": _BASH % {"ask": _ASK.format(line="$line", program='"$1"')},
    "zsh": _ZSH % {"ask": _ASK.format(line="${(j: :)words[1,CURRENT]}", program="$words[1]")},
    "fish": _FISH % {"ask": _ASK.format(line="$line", program="(commandline -opc)[1]")},
}


def completion_script(shell: str) -> str:
    """The completion script of ``shell``, which ``completions/`` ships."""
    if shell not in _SCRIPTS:
        raise CtrlpostError(f"unknown shell {shell!r}", hint=f"choose one of: {', '.join(SHELLS)}")
    return _SCRIPTS[shell]

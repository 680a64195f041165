"""Bash completion for ``s3mount``, written from the argument parsers and the option table.

Generated rather than kept by hand, so a new subcommand, flag or ``-o`` option completes as soon
as it exists. ``install-helpers`` installs it where bash-completion looks
(/usr/local/share/bash-completion/completions/s3mount); ``s3mount completion bash`` prints it.

What completes: subcommands; each subcommand's flags; ``-o`` option names, after the commas of a
list too (``-o ro,cache_s<TAB>``); profile names of config.toml for commands that take one; and
directories for mountpoints. Words are read from ``COMP_LINE``, not ``COMP_WORDS``, since bash
splits the latter at ``=`` and ``:``, which every ``-o`` list and ``s3://`` source contains.
"""

from __future__ import annotations

import argparse
import shlex

from .options import OPTIONS

# Subcommands whose first operand is a profile name, and those whose operands are directories.
PROFILE_COMMANDS = ("mount", "login", "credentials")
DIRECTORY_COMMANDS = ("mount", "umount", "status", "demo")

_TEMPLATE = r"""# bash completion for s3mount, written from s3mount's parsers (`s3mount completion bash`).

_s3mount_profiles() {
    local config=${XDG_CONFIG_HOME:-$HOME/.config}/s3mount/config.toml
    [[ -r $config ]] && sed -n 's/^[[:space:]]*\[profiles\.\([A-Za-z0-9_.-]*\)\][[:space:]]*$/\1/p' "$config"
}

_s3mount() {
    local line=${COMP_LINE:0:COMP_POINT}
    local -a words
    read -ra words <<< "$line"
    [[ -z $line || $line == *[[:space:]] ]] && words+=("")
    local cur=${words[-1]} prev=
    (( ${#words[@]} > 1 )) && prev=${words[-2]}
    local command=${words[1]-}
    COMPREPLY=()
    if [[ $prev == -o ]]; then
        local head=${cur%"${cur##*,}"}
        COMPREPLY=($(compgen -P "$head" -W "@OPTIONS@" -- "${cur##*,}"))
        compopt -o nospace 2>/dev/null
    elif (( ${#words[@]} <= 2 )); then
        COMPREPLY=($(compgen -W "@COMMANDS@ --help --version" -- "$cur"))
    elif [[ $cur == -* ]]; then
        case $command in
@FLAGS@
        esac
    else
        case " @PROFILE_COMMANDS@ " in *" $command "*)
            COMPREPLY+=($(compgen -W "$(_s3mount_profiles)" -- "$cur")) ;;
        esac
        case " @DIRECTORY_COMMANDS@ " in *" $command "*)
            COMPREPLY+=($(compgen -d -- "$cur")) ;;
        esac
    fi
    # bash replaces only the text after the last '=' or ':' of the word: drop what precedes it.
    local done=${cur%"${cur##*[=:]}"}
    [[ -n $done ]] && COMPREPLY=("${COMPREPLY[@]#"$done"}")
    return 0
}

complete -F _s3mount s3mount
"""


def bash_script() -> str:
    """The completion script for the parsers of this s3mount."""
    from .cli import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    flags = []
    for name, p in sub.choices.items():
        words = sorted(s for a in p._actions for s in a.option_strings)
        flags.append(f"            {name}) COMPREPLY=($(compgen -W {shlex.quote(' '.join(words))}"
                     ' -- "$cur")) ;;')
    options = [name if opt.kind is bool else f"{name}=" for name, opt in OPTIONS.items()]
    return (_TEMPLATE.replace("@OPTIONS@", " ".join(options))
            .replace("@COMMANDS@", " ".join(sub.choices))
            .replace("@FLAGS@", "\n".join(flags))
            .replace("@PROFILE_COMMANDS@", " ".join(PROFILE_COMMANDS))
            .replace("@DIRECTORY_COMMANDS@", " ".join(DIRECTORY_COMMANDS)))

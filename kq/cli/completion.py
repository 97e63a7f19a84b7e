"""Tab completion: typer's, with the fixes kq's options need.

bash splits ``--data-dir=DIR`` at '=' before kq sees it; zsh and fish
complete whole ``--offset=be`` words; zsh descriptions need their quotes and
backslashes escaped. Loaded only when a shell asks for completions.
"""

import os


def join_equals(words: list[str], current: int) -> tuple[list[str], int]:
    """Words as the command line wrote them, where bash split ``--opt=value`` at '='.

    bash breaks completion words at '=' (COMP_WORDBREAKS), so
    ``--data-dir=DIR`` arrives as ``--data-dir``, ``=``, ``DIR``; click
    needs it whole. Returns the joined words and the index of the word
    being completed in them.
    """
    out: list[str] = []
    where = None
    i = 0
    while i < len(words):
        word = words[i]
        joinable = out and (out[-1].startswith("--") or out[-1] in _EQUALS_SHORT) and "=" not in out[-1]
        if word == "=" and joinable:
            out[-1] += "="
            if i == current:
                where = len(out) - 1
            if i + 1 < len(words) and words[i + 1] != "=":
                out[-1] += words[i + 1]
                if i + 1 == current:
                    where = len(out) - 1
                i += 1
        else:
            if i == current:
                where = len(out)
            out.append(word)
        i += 1
    return out, len(out) if where is None else where


# Short options that also take ``-o=VALUE`` (see _option_value).
_EQUALS_SHORT = ("-o", "-g")


def use_kq_completion() -> None:
    """typer's completion, fixed: bash after ``--opt=`` (and ``-o=``), zsh and fish on
    ``--opt=value`` words, zsh descriptions with quotes and backslashes."""
    from typer._click.shell_completion import add_completion_class, split_arg_string
    from typer._completion_classes import BashComplete, FishComplete, ZshComplete, _sanitize_help_text

    class Bash(BashComplete):
        def get_completion_args(self):
            words = split_arg_string(os.environ["COMP_WORDS"])
            words, current = join_equals(words, int(os.environ["COMP_CWORD"]))
            return words[1:current], words[current] if current < len(words) else ""

    def zsh_quoted(text: str) -> str:
        # Inside zsh double quotes only these four are special.
        return text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$").replace("`", "\\`")

    class WholeWord:
        """zsh and fish complete the whole word `--offset=be`: offer `--offset=beginning`, not `beginning`."""

        value_prefix = ""

        def get_completion_args(self):
            args, incomplete = super().get_completion_args()
            if incomplete.startswith("-") and "=" in incomplete:
                self.value_prefix = incomplete.partition("=")[0] + "="
            return args, incomplete

        def get_completions(self, args, incomplete):
            items = super().get_completions(args, incomplete)
            for item in items:
                item.value = self.value_prefix + item.value
            return items

    class Zsh(WholeWord, ZshComplete):
        def format_completion(self, item) -> str:
            value = zsh_quoted(item.value).replace(":", "\\:")
            if item.help:
                return f'"{value}":"{zsh_quoted(_sanitize_help_text(item.help))}"'
            return f'"{value}"'

        def complete(self) -> str:
            args, incomplete = self.get_completion_args()
            items = [self.format_completion(item) for item in self.get_completions(args, incomplete)]
            if not items:
                return "_files"
            # The script evals this unquoted: the spec is one single-quoted word.
            spec = "*: :((" + "\n".join(items) + "))"
            return "_arguments '" + spec.replace("'", "'\\''") + "'"

    class Fish(WholeWord, FishComplete):
        pass

    add_completion_class(Bash, "bash")
    add_completion_class(Zsh, "zsh")
    add_completion_class(Fish, "fish")

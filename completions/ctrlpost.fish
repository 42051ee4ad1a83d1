# fish completion for ctrlpost; to install it:
#   ctrlpost completion fish > ~/.config/fish/completions/ctrlpost.fish
function __ctrlpost_complete
    set -l line (commandline -cp)
    env COMP_WORDS="$line''" COMP_CWORD=-1 _CTRLPOST_COMPLETE=complete_bash (commandline -opc)[1] 2>/dev/null
end

complete --command ctrlpost --no-files --arguments '(__ctrlpost_complete)'

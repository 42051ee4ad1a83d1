# bash completion for ctrlpost; to install it:
#   ctrlpost completion bash > ~/.local/share/bash-completion/completions/ctrlpost
_ctrlpost_completion() {
    local line=${COMP_LINE:0:COMP_POINT} cur=${COMP_WORDS[COMP_CWORD]} drop word
    # Bash replaces only the text after the last = or : typed (which is a word of its own in
    # COMP_WORDS), so each reply drops what comes before it.
    [[ $cur == [=:] ]] && cur=
    drop=${line##*[[:space:]]}
    drop=${drop%"$cur"}
    COMPREPLY=()
    while IFS= read -r word; do
        [[ -n $word ]] || continue
        printf -v word %q "${word#"$drop"}"
        [[ $word == '\~'* ]] && word=${word:1}  # a leading ~ stays the home folder
        COMPREPLY+=("$word")
    done < <(env COMP_WORDS="$line''" COMP_CWORD=-1 _CTRLPOST_COMPLETE=complete_bash "$1" 2>/dev/null)
    # A folder (dir/) or a key (key=) goes on: no space after it.
    if [[ ${#COMPREPLY[@]} -eq 1 && ${COMPREPLY[0]} == *[/=] ]]; then compopt -o nospace; fi
    return 0
}

complete -F _ctrlpost_completion ctrlpost

#compdef ctrlpost
# zsh completion for ctrlpost; to install it:
#   ctrlpost completion zsh > "${fpath[1]}/_ctrlpost"
_ctrlpost() {
    local -a quoted
    local word
    for word in ${(f)"$(env COMP_WORDS="${(j: :)words[1,CURRENT]}''" COMP_CWORD=-1 _CTRLPOST_COMPLETE=complete_bash $words[1] 2>/dev/null)"}; do
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

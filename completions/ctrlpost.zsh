
#compdef ctrlpost

_ctrlpost_completion() {
  eval $(env _TYPER_COMPLETE_ARGS="${words[1,$CURRENT]}" _CTRLPOST_COMPLETE=complete_zsh ctrlpost)
}

compdef _ctrlpost_completion ctrlpost


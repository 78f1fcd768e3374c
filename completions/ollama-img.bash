_ollama_img_completion() {
    local IFS=$'
'
    COMPREPLY=( $( env COMP_WORDS="${COMP_WORDS[*]}" \
                   COMP_CWORD=$COMP_CWORD \
                   _OLLAMA_IMG_COMPLETE=complete_bash $1 ) )
    return 0
}

complete -o default -F _ollama_img_completion ollama-img

# Sourced by start_ray_head.sh, start_ray_worker.sh and serve_65b.sh, which run Ray with
# token authentication (RAY_AUTH_MODE=token): stop with instructions when this node has no
# token. Ray reads RAY_AUTH_TOKEN, else the file RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token.

ray_token_missing() {
    cat >&2 <<MSG
error: $1
Ray token authentication is on (RAY_AUTH_MODE=token) and every node needs the cluster's token.
  1. On the head node, once:  ray get-auth-token --generate
     (writes ~/.ray/auth_token; keep it private: chmod 600 ~/.ray/auth_token)
  2. On every other node (workers, and where serve_65b.sh or 'serve run' runs), either
       copy the head's ~/.ray/auth_token to ~/.ray/auth_token, or
       export RAY_AUTH_TOKEN="<content of the head's ~/.ray/auth_token>"
Then run $(basename "$0") again.
MSG
    exit 1
}

if [[ -z "${RAY_AUTH_TOKEN:-}" ]]; then
    if [[ -n "${RAY_AUTH_TOKEN_PATH:-}" ]]; then
        [[ -s "$RAY_AUTH_TOKEN_PATH" ]] \
            || ray_token_missing "RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH is missing or empty."
    elif [[ ! -s "$HOME/.ray/auth_token" ]]; then
        ray_token_missing "no Ray auth token: RAY_AUTH_TOKEN and RAY_AUTH_TOKEN_PATH are unset and $HOME/.ray/auth_token is missing or empty."
    fi
fi
export RAY_AUTH_MODE=token

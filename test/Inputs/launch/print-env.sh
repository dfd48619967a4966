#!/bin/sh
# A stand-in rank program for moec launch's tests: prints the environment the
# launch set and its arguments, one line on stdout and one on stderr.
echo "RANK=$RANK WORLD_SIZE=$WORLD_SIZE LOCAL_RANK=$LOCAL_RANK LOCAL_WORLD_SIZE=$LOCAL_WORLD_SIZE MASTER_ADDR=$MASTER_ADDR MASTER_PORT=$MASTER_PORT MOERT_JOB_TOKEN=$MOERT_JOB_TOKEN args=$*"
printf 'to stderr, without a final newline' >&2

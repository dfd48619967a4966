#!/bin/sh
# A stand-in rank program for moec launch's tests: rank 1 fails with status
# 3 once the others are up (each touches "$1.RANK" when ready); rank 2
# ignores SIGTERM; the others sleep. None of the sleepers should live to
# print again.
case "$RANK" in
1)
  for peer in 0 2 3; do
    while [ ! -e "$1.$peer" ]; do sleep 0.05; done
  done
  echo "rank 1 fails"; exit 3 ;;
2) trap '' TERM; echo "rank 2 ignores SIGTERM"; touch "$1.$RANK"; sleep 20 ;;
*) echo "rank $RANK sleeps"; touch "$1.$RANK"; sleep 20 ;;
esac
echo "rank $RANK was not stopped"

#!/bin/sh
# A stand-in rank program for moec launch's tests: rank 1 fails with status
# 3 once the others are up; rank 2 ignores SIGTERM; the others sleep. None
# of the sleepers should live to print.
case "$RANK" in
1) sleep 0.5; echo "rank 1 fails"; exit 3 ;;
2) trap '' TERM; echo "rank 2 ignores SIGTERM"; sleep 20 ;;
*) echo "rank $RANK sleeps"; sleep 20 ;;
esac
echo "rank $RANK was not stopped"

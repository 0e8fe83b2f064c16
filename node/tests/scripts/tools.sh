#!/usr/bin/env bash
# Ordinary tools in directory $1 (a mount or a plain directory), on a copy of the tree $2.
# The same script runs on both; the test compares the results with `diff -r`.
set -euo pipefail
dir=$1
src=$2
cd "$dir"
cp -r "$src" copied
# Symbolic links, to a file, to a directory and to nothing: copied, synced, archived,
# committed and cloned as links.
ln -s main.rs copied/alias.rs
ln -s actor copied/actor-link
ln -s ../nowhere copied/dangling
rsync -a copied/ synced/
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf archive.tar copied
mkdir extracted
tar -C extracted -xf archive.tar
git init -q repo
cp -r copied/. repo/
(
  cd repo
  git add -A
  GIT_AUTHOR_DATE="2026-01-01T00:00:00Z" GIT_COMMITTER_DATE="2026-01-01T00:00:00Z" \
    git -c user.email=ci@example.invalid -c user.name=ci commit -qm "first commit"
)
git clone -q repo cloned
sqlite3 data.db "create table t(id integer primary key, name text);"
for i in $(seq 1 50); do echo "insert into t(name) values ('row $i');"; done | sqlite3 data.db
sqlite3 data.db "select count(*), sum(id) from t;" > query.txt
# An editor's atomic save: write a temporary file, then rename it over the original.
printf 'first draft\n' > notes.txt
printf 'second draft\n' > .notes.txt.swp
mv .notes.txt.swp notes.txt
# Removing: a directory that is not empty stays, then goes once emptied.
mkdir gone
touch gone/file
if rmdir gone 2>/dev/null; then echo "rmdir removed a directory that is not empty" >&2; exit 1; fi
rm gone/file
rmdir gone
# Modification times: rsync -a keeps the files', tar restores the archive's (all 0
# here, directories included), touch sets one to the nanosecond.
file_times() { (cd "$1" && find . -type f -printf '%p %T@\n' | sort); }
if [ "$(file_times copied)" != "$(file_times synced)" ]; then
  echo "rsync -a did not keep the modification times:" >&2
  diff <(file_times copied) <(file_times synced) >&2 || true
  exit 1
fi
if [ -n "$(find extracted/copied -printf '%Ts %p\n' | grep -v '^0 ')" ]; then
  echo "tar did not restore the modification times:" >&2
  find extracted/copied -printf '%Ts %p\n' >&2
  exit 1
fi
# Links read back, the kernel follows them, and every copy kept them as links.
[ "$(readlink copied/alias.rs)" = main.rs ] || { echo "readlink: $(readlink copied/alias.rs)" >&2; exit 1; }
cmp copied/alias.rs copied/main.rs
[ -f copied/actor-link/mailbox.rs ] || { echo "the directory link does not lead into actor/" >&2; exit 1; }
for copy in synced extracted/copied repo cloned; do
  [ -L "$copy/dangling" ] && [ "$(readlink "$copy/dangling")" = ../nowhere ] ||
    { echo "$copy/dangling is not the link to ../nowhere" >&2; exit 1; }
done
touch -d '2001-02-03 04:05:06.123456789 UTC' notes.txt
if [ "$(find notes.txt -printf '%T@')" != "981173106.1234567890" ]; then
  echo "touch -d set $(find notes.txt -printf '%T@'), not 981173106.1234567890" >&2
  exit 1
fi
find . -path ./repo/.git -prune -o -path ./cloned/.git -prune -o -type f -print | sort > ../find-"$(basename "$dir")".txt
du -s . > /dev/null
